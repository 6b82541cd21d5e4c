"""The C paged-decode kernel (CPU backend) against the float64 torch reference.

Every compiled variant is checked: the machine's best (AVX512-BF16 dot products for bf16 where
the CPU has them), one without AVX512-BF16 (AVX-512 widening bf16 to float32) and one without
AVX-512 (the plain-C loops other CPUs run). Then the backend
selection: ``auto`` picks ``cpu`` when the kernel builds and ``torch`` when it cannot.
"""
import logging

import pytest
import torch

from pagedllm.kernels import cpu_build, cpu_decode, reference

# (heads, kv heads, head dim, block size, sliding window, soft cap, alibi): GQA 3/4, MHA, MQA, a
# head dim that is not a multiple of 16 (the plain loops even with AVX-512), a window shorter
# than contexts, Gemma-2 soft-capping, ALiBi (with and without GQA), 7 heads per KV head (more
# than the bf16 P.V loop keeps in registers at once), Gemma-2's head dim 256.
SHAPES = [(9, 3, 64, 16, None, None, False), (8, 8, 128, 32, None, None, False), (4, 1, 80, 16, None, None, False),
          (8, 2, 64, 16, 37, None, False), (16, 4, 32, 8, None, None, False), (8, 4, 64, 16, 50, 5.0, False),
          (4, 4, 80, 16, None, 2.0, False), (8, 8, 64, 16, None, None, True), (8, 2, 128, 16, None, None, True),
          (14, 2, 64, 16, None, None, False), (8, 4, 256, 16, 100, 50.0, False)]
CONTEXT_LENS = [1, 2, 15, 16, 17, 63, 100, 333, 64, 511]
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 1.5e-2}
# bf16 outputs round to ~8e-3 near 1, so the max alone would hide a small systematic error.
MEAN_TOLERANCE = {torch.float32: 2e-7, torch.bfloat16: 1e-3}
VARIANTS = {"native": (), "no-avx512-bf16": ("-mno-avx512bf16",), "no-avx512": ("-mno-avx512f",)}


def _case(dtype, heads, kv_heads, head_dim, block_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 1024
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen).to(dtype)
    lens = torch.tensor(CONTEXT_LENS, dtype=torch.int32)
    width = -(-int(lens.max()) // block_size)
    # Shuffled, non-overlapping physical blocks per sequence; unused entries point at block 0.
    perm = torch.randperm(num_blocks, generator=gen)
    tables = perm[:len(CONTEXT_LENS) * width].view(len(CONTEXT_LENS), width).to(torch.int32)
    q = torch.randn(len(CONTEXT_LENS), heads, head_dim, generator=gen).to(dtype)
    return q, k_cache, v_cache, tables, lens


def _reference(q, k_cache, v_cache, tables, lens, scale, window, cap, slopes):
    """float64 attention per sequence: the torch reference twin, plus the ALiBi bias it lacks."""
    if slopes is None:
        return reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), tables, lens, scale,
                                                window, cap)
    heads, group = q.shape[1], q.shape[1] // k_cache.shape[2]
    outs = []
    for b, n in enumerate(lens.tolist()):
        pos = torch.arange(n)
        k = _tokens(k_cache, tables[b], pos).repeat_interleave(group, dim=1)  # [n, H, D]
        v = _tokens(v_cache, tables[b], pos).repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,thd->ht", q[b].double(), k) * scale
        scores = scores + slopes.double().view(heads, 1) * (pos - (n - 1)).double().view(1, n)
        outs.append(torch.einsum("ht,thd->hd", scores.softmax(-1), v))
    return torch.stack(outs)


def _tokens(cache, table, pos):
    bs = cache.shape[1]
    return cache[table[pos // bs].long(), pos % bs].double()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "h{}kv{}d{}bs{}w{}cap{}alibi{}".format(*s))
def test_kernel_matches_float64_reference(variant, dtype, shape):
    lib = cpu_decode.load(VARIANTS[variant])
    assert lib is not None, "the CPU kernel must build on the test machine (gcc is part of the image)"
    heads, kv_heads, head_dim, block_size, window, cap, alibi = shape
    q, k_cache, v_cache, tables, lens = _case(dtype, heads, kv_heads, head_dim, block_size)
    scale = head_dim ** -0.5
    slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads) if alibi else None  # ALiBi's geometric slopes
    out = cpu_decode.paged_decode(lib, q, k_cache, v_cache, tables, lens, int(lens.max()), scale, window, cap, slopes)
    want = _reference(q, k_cache, v_cache, tables, lens, scale, window, cap, slopes)
    assert out.dtype == dtype and out.shape == q.shape
    err = (out.double() - want).abs()
    assert err.max().item() <= TOLERANCE[dtype], f"max abs error {err.max().item():.3g}"
    assert err.mean().item() <= MEAN_TOLERANCE[dtype], f"mean abs error {err.mean().item():.3g}"


def test_kernel_writes_into_a_strided_output():
    """The backend hands in a slice of its output buffer; a non-contiguous one is filled too."""
    lib = cpu_decode.load()
    q, k_cache, v_cache, tables, lens = _case(torch.float32, 4, 2, 64, 16, seed=1)
    out = torch.full((q.shape[1], q.shape[0], q.shape[2]), float("nan")).transpose(0, 1)
    got = cpu_decode.paged_decode(lib, q, k_cache, v_cache, tables, lens, int(lens.max()), 0.125, out=out)
    assert got is out
    want = reference.paged_decode_attention(q.double(), k_cache.double(), v_cache.double(), tables, lens, 0.125)
    torch.testing.assert_close(out.double(), want, atol=2e-6, rtol=0)


def test_auto_backend_is_cpu_when_the_kernel_builds_and_torch_when_disabled(monkeypatch):
    from pagedllm.attention import get_attention_backend

    assert get_attention_backend(None, torch.device("cpu")).name == "cpu"
    monkeypatch.setenv("PAGEDLLM_CPU_KERNEL", "0")
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    assert cpu_decode.load() is None
    assert get_attention_backend(None, torch.device("cpu")).name == "torch"


def test_no_compiler_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cpu_build, "_LIBS", {})
    monkeypatch.setenv("PAGEDLLM_CACHE_DIR", str(tmp_path))  # no cached build to reuse
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="pagedllm.kernels.cpu_build"):
        assert cpu_decode.load() is None
    assert "torch gather + SDPA path" in caplog.text


def test_engine_decodes_identically_through_both_cpu_backends(float_activations):
    """float32 greedy text through the C kernel equals the torch gather + SDPA path's (and the
    HF-parity tests already run the default, kernel, backend against transformers). Float activations: with
    8-bit ones a last-bit difference between the two attentions can move an activation across a rounding
    boundary, and greedy text then parts after a while; the backends are what is compared here."""
    from model_fixtures import BUNDLED, SEED_PROMPTS

    from pagedllm import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    tokens = {}
    for backend in ("cpu", "torch"):
        llm = LLM(BUNDLED, dtype="float32", attention_backend=backend, kv_cache_memory=64 << 20)
        assert llm.llm_engine.runner.backend_cls.name == backend
        tokens[backend] = [o.outputs[0].token_ids for o in llm.generate(SEED_PROMPTS * 4, params, use_tqdm=False)]
        del llm
    assert tokens["cpu"] == tokens["torch"]


def test_shapes_past_the_kernel_buffers_are_declined_not_overrun():
    """More heads than the kernel's per-head arrays hold (here 256 x 16): it returns None and the
    backend takes the torch path, instead of writing past its stack buffers."""
    lib = cpu_decode.load()
    q, k_cache, v_cache, tables, lens = _case(torch.float32, 256, 256, 16, 16)
    assert cpu_decode.paged_decode(lib, q, k_cache, v_cache, tables, lens, int(lens.max()), 0.25) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_store_kv_equals_the_torch_backends_index_copy(dtype):
    """k/v are strided slices of a fused q|k|v row; padding slots (-1) are skipped; the caches end
    bit-identical to the torch backend's write, and the other slots untouched."""
    from pagedllm.attention.backend import AttentionMetadata, StepState
    from pagedllm.attention.torch_backend import TorchAttentionBackend

    gen = torch.Generator().manual_seed(5)
    T, kvh, d, blocks, bs = 7, 3, 64, 6, 16
    qkv = torch.randn(T, (9 + 2 * kvh) * d, generator=gen).to(dtype)
    k = qkv[:, 9 * d:(9 + kvh) * d].view(T, kvh, d)
    v = qkv[:, (9 + kvh) * d:].view(T, kvh, d)
    slots = torch.tensor([5, 17, -1, 95, 0, -1, 40])
    k_cache, v_cache = (torch.randn(blocks, bs, kvh, d, generator=gen).to(dtype) for _ in range(2))
    torch_caches = (k_cache.clone(), v_cache.clone())
    assert cpu_decode.store_kv(cpu_decode.load(), k, v, k_cache, v_cache, slots)
    md = AttentionMetadata.__new__(AttentionMetadata)  # only the fields a cache write reads
    md.slot_mapping, md.backend_state = slots, StepState(write_mask=slots >= 0)
    TorchAttentionBackend(9, kvh, d, 0.125)._write_cache(k, v, *torch_caches, md)
    assert torch.equal(k_cache, torch_caches[0]) and torch.equal(v_cache, torch_caches[1])
    written = slots >= 0
    assert torch.equal(k_cache.view(-1, kvh, d)[slots[written]], k[written])


def test_store_kv_declines_what_it_cannot_take():
    lib = cpu_decode.load()
    k_cache = v_cache = torch.zeros(2, 16, 2, 8)
    k = torch.ones(3, 2, 8)
    assert not cpu_decode.store_kv(lib, k, k, k_cache, v_cache, torch.tensor([0, 1, 32]))  # past the cache
    assert not cpu_decode.store_kv(lib, k, k, k_cache, v_cache, torch.tensor([0, 1, 2], dtype=torch.int32))
    assert not cpu_decode.store_kv(lib, k.transpose(1, 2).contiguous().transpose(1, 2), k, k_cache, v_cache,
                                   torch.tensor([0, 1, 2]))  # heads not contiguous in a row
    assert not cpu_decode.store_kv(lib, k.bfloat16(), k.bfloat16(), k_cache, v_cache, torch.tensor([0, 1, 2]))
    assert int(k_cache.count_nonzero()) == 0
