"""fp8 weights: greedy tokens equal those of the same fp8 weights dequantized to a dense float32 checkpoint
(written by the test quantizer from the stored bytes, ``fp8_files``), for a dense checkpoint quantized at
load (Llama, Qwen2 with q/k/v biases, GPT-NeoX whose fused q|k|v rows are re-laid per head) and for fp8
checkpoints in the vLLM/HF layout (per-channel and per-tensor scales, static input scales ignored)."""
import pytest
import torch

from fp8_files import write_fp8
from model_fixtures import SEED_PROMPTS, make_tiny_model, save_random_model
from pagedllm import LLM, SamplingParams
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization.fp8_linear import Fp8LinearMethod

SIZES = dict(hidden_size=128, intermediate_size=256)
ENGINE = dict(dtype="float32", kv_cache_memory=16 << 20)


def mixtral(path):
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=49152, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=512, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return save_random_model(path, config, seed=4)


def gpt_neox(path):
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=512, rotary_pct=0.5,
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return save_random_model(path, config, seed=3)


class Sources(dict):
    """Tiny source checkpoints, each written when a test first asks for it (the slow ones only then)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch):
        path = self.root / arch
        builders = {"gpt_neox": gpt_neox, "mixtral": mixtral}
        self[arch] = builders[arch](path) if arch in builders else make_tiny_model(
            path, arch, **SIZES, **({"num_hidden_layers": 4} if arch == "llama" else {}))
        return self[arch]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return Sources(tmp_path_factory.mktemp("fp8_sources"))


def greedy(llm: LLM, max_tokens: int = 16) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(SEED_PROMPTS, params, use_tqdm=False)]


def fp8_layers(llm: LLM) -> dict[str, LinearBase]:
    model = llm.llm_engine.runner.model
    return {n: m for n, m in model.named_modules() if isinstance(m, LinearBase)}


@pytest.mark.parametrize("arch", ["llama", *(pytest.param(a, marks=pytest.mark.slow)
                                              for a in ("gpt_neox", "qwen2", "mixtral"))])
def test_quantized_at_load_equals_the_dequantized_dense_model(sources, tmp_path, arch):
    """(Mixtral: its experts in fp8 too, per expert and output row; the router stays dense, as vLLM's.)"""
    keep = r"block_sparse_moe\.gate\." if arch == "mixtral" else None
    _, dense_dir = write_fp8(sources[arch], None, tmp_path / "dense", keep_dense=keep)
    Fp8LinearMethod.pending_bytes = Fp8LinearMethod.peak_pending_bytes = 0
    llm = LLM(sources[arch], quantization="fp8", **ENGINE)
    layers = fp8_layers(llm)
    routers = {n: layers.pop(n) for n in list(layers) if n.endswith(".mlp.gate")}  # Mixtral's
    assert len(routers) == (2 if arch == "mixtral" else 0)
    assert not any(isinstance(m.linear_method, Fp8LinearMethod) for m in routers.values())
    for moe in (m for m in llm.llm_engine.runner.model.modules() if hasattr(m, "w13_weight")):
        assert moe.w13_weight.dtype == moe.w2_weight.dtype == torch.float8_e4m3fn
        assert moe.w13_weight_scale.shape == moe.w13_weight.shape[:2]  # [experts, 2 * intermediate]
    assert layers and all(isinstance(m.linear_method, Fp8LinearMethod) for m in layers.values())
    assert all(m.weight.dtype == torch.float8_e4m3fn and m.weight_scale.shape == (m.output_size,)
               for m in layers.values())
    # resident linear weights: one byte a weight plus a float32 scale a row, about half of bf16
    fp8_bytes = sum(m.weight.nbytes + m.weight_scale.nbytes for m in layers.values())
    bf16_bytes = sum(2 * m.output_size * m.input_size for m in layers.values())
    assert 0.5 <= fp8_bytes / bf16_bytes <= 0.5 + 2 / 128
    # loaded layer by layer: the dense rows waiting for their layer's other shards never approach the model
    dense_fp32 = sum(4 * m.output_size * m.input_size for m in layers.values())
    largest = max(4 * m.output_size * m.input_size for m in layers.values())
    assert 0 < Fp8LinearMethod.peak_pending_bytes <= min(2 * largest, dense_fp32 // 2)
    assert Fp8LinearMethod.pending_bytes == 0
    got = greedy(llm)
    del llm
    assert got == greedy(LLM(dense_dir, **ENGINE))


@pytest.mark.parametrize("arch,per,scheme", [("llama", "channel", "dynamic"), ("llama", "tensor", "static"),
                                             pytest.param("qwen2", "tensor", "dynamic", marks=pytest.mark.slow)])
def test_fp8_checkpoint_equals_the_dequantized_dense_model(sources, tmp_path, arch, per, scheme):
    fp8_dir, dense_dir = write_fp8(sources[arch], tmp_path / "fp8", tmp_path / "dense", per, scheme)
    llm = LLM(fp8_dir, **ENGINE)  # detected from config.json's quantization_config
    layers = fp8_layers(llm)
    assert all(isinstance(m.linear_method, Fp8LinearMethod) and m.linear_method.config.serialized
               for m in layers.values())
    qkv = llm.llm_engine.runner.model.model.layers[0].self_attn.qkv_proj
    if per == "tensor":  # q, k and v each keep their own scale: three distinct values over the fused rows
        assert qkv.weight_scale.unique().numel() == 3
    got = greedy(llm)
    del llm
    assert got == greedy(LLM(dense_dir, **ENGINE))
    again = LLM(fp8_dir, quantization="fp8", **ENGINE)  # naming the format the checkpoint has is accepted
    assert greedy(again) == got


@pytest.mark.slow
def test_bundled_model_requantized_to_fp8(tmp_path):
    """The bundled GGUF, dequantized (dequantize_gguf=True) and requantized to fp8 at load: 32 greedy tokens
    of 4 prompts equal the dense twin's, and the top-1 of 512 teacher-forced positions agree >= 99%."""
    from model_fixtures import BUNDLED, bundled_path

    llm = LLM(BUNDLED, quantization="fp8", dequantize_gguf=True, dtype="float32", kv_cache_memory=64 << 20)
    _, dense_dir = write_fp8(bundled_path(), None, tmp_path / "dense")
    got = greedy(llm, 32)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    text = " ".join(SEED_PROMPTS) * 40
    ids = llm.get_tokenizer()(text)["input_ids"][:513]
    fp8_prompt = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0].prompt_logprobs
    del llm
    dense = LLM(dense_dir, dtype="float32", kv_cache_memory=64 << 20)
    assert got == greedy(dense, 32)
    dense_prompt = dense.generate({"prompt_token_ids": ids}, params, use_tqdm=False)[0].prompt_logprobs
    top = lambda lp: max(lp.items(), key=lambda kv: kv[1].logprob)  # noqa: E731
    pairs = [(top(a), top(b)) for a, b in zip(fp8_prompt[1:], dense_prompt[1:])]
    assert len(pairs) == 512
    agree = sum(a[0] == b[0] for a, b in pairs) / len(pairs)
    assert agree >= 0.99
    assert max(abs(a[1].logprob - b[1].logprob) for a, b in pairs if a[0] == b[0]) <= 1e-3


@pytest.mark.gpu
def test_quantized_at_load_on_cuda_equals_the_dequantized_dense_model(sources, tmp_path):
    """On CUDA the Triton kernel (``kernels/fp8_matmul.py``) multiplies: the same tokens as the dense twin."""
    _, dense_dir = write_fp8(sources["llama"], None, tmp_path / "dense")
    engine = dict(dtype="float32", device="cuda", gpu_memory_utilization=0.3, enforce_eager=False)
    llm = LLM(sources["llama"], quantization="fp8", **engine)
    qkv = llm.llm_engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.device.type == "cuda" and qkv.weight.dtype == torch.float8_e4m3fn
    got = greedy(llm)
    del llm
    assert got == greedy(LLM(dense_dir, **engine))
