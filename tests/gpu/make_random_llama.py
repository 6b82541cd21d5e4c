"""Write a random-weight Llama of real shapes (about 0.68B parameters) for GPU benchmarks.

No download: the config comes from transformers' LlamaConfig, the weights from a seeded normal
draw, the tokenizer from the folder given (the bundled SmolLM2's, 49152 tokens). Shapes follow
a 0.5-1B chat model: hidden 1536, 24 layers, 24 query / 8 KV heads (GQA), MLP 4096, tied embeddings.

    python -P tests/gpu/make_random_llama.py OUT_DIR TOKENIZER_DIR [--device cuda]
"""
from __future__ import annotations

import argparse

import torch

SHAPES = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=24,
              num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=100000.0,
              tie_word_embeddings=True)


def make(out_dir: str, tokenizer_dir: str, device: str = "cpu", **overrides) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **{**SHAPES, **overrides})
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # wider than the init default so that logits are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.04)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    print(f"random Llama: {n / 1e9:.2f}B parameters -> {out_dir}")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("out_dir")
    parser.add_argument("tokenizer_dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=SHAPES["num_hidden_layers"])
    args = parser.parse_args()
    make(args.out_dir, args.tokenizer_dir, args.device, num_hidden_layers=args.layers)


if __name__ == "__main__":
    main()
