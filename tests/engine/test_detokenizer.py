"""Incremental detokenization equals a full decode and never emits a broken UTF-8 character."""
import pytest
from transformers import AutoTokenizer

from pagedllm.tokenizer import IncrementalDetokenizer

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "Emoji: 🤖🚀👩‍👩‍👧 and accents: crème brûlée, naïve café.",
    "中文分词测试，日本語のテキスト、한국어 문장.",
    "  leading spaces\nnew lines\ttabs and trailing  ",
]


@pytest.fixture(scope="module")
def tokenizer(bundled_model_path):
    return AutoTokenizer.from_pretrained(bundled_model_path)


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode(tokenizer, text):
    prompt = tokenizer.encode("Say something:")
    output = tokenizer.encode(text)
    detok = IncrementalDetokenizer(tokenizer, prompt)
    ids, pieces = list(prompt), []
    for t in output:
        ids.append(t)
        delta = detok.step(ids)
        assert "\ufffd" not in delta
        pieces.append(delta)
    assert "".join(pieces) == tokenizer.decode(output)
