"""``trust_remote_code`` as transformers honours it: a folder whose config class is custom code is
refused without it (transformers' own message) and runs with it."""
import json

import pytest

from model_parity import VOCAB, save_random_model

REMOTE_CONFIG = '''
from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny_remote"
'''


@pytest.fixture(scope="module")
def remote_folder(tmp_path_factory):
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("remote")
    save_random_model(path, LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=128,
                                        architectures=["LlamaForCausalLM"]))
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="tiny_remote", auto_map={"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG)
    return path


def test_remote_code_is_refused_without_trust_remote_code(remote_folder):
    from pagedllm import LLM

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM(str(remote_folder), dtype="float32", kv_cache_memory=8 << 20)


def test_remote_code_runs_with_trust_remote_code(remote_folder):
    from pagedllm import LLM, SamplingParams

    llm = LLM(str(remote_folder), dtype="float32", kv_cache_memory=8 << 20, trust_remote_code=True)
    assert type(llm.llm_engine.hf_config).__name__ == "TinyRemoteConfig"
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
