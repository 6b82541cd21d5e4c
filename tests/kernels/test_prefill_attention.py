"""Triton paged varlen prefill attention vs its reference twin evaluated in float64."""
import pytest
import torch
from paged_cases import FULL_GRID, PAIRWISE_GRID, check, grid_id, make_case

from pagedllm.kernels import reference
from pagedllm.kernels.prefill_attention import paged_prefill_attention


def _run(case, scale, sliding_window=None, soft_cap=None):
    out = paged_prefill_attention(case.q, case.k_cache, case.v_cache, case.block_tables,
                                  case.query_start_loc, case.context_lens, scale,
                                  sliding_window, soft_cap)
    ref = reference.paged_prefill_attention(
        case.q.double(), case.k_cache.double(), case.v_cache.double(), case.block_tables,
        case.query_start_loc, case.context_lens, scale, sliding_window, soft_cap)
    return out, ref


def _chunks(block_size):
    """(context_len, query_len): one-token chunks, fresh prompts, chunked prefill with a
    cached prefix, chunks crossing block boundaries, and a long (2048) prefix."""
    bs = block_size
    return [(1, 1), (7, 1), (bs + 1, bs + 1), (3 * bs + 5, 2 * bs), (300, 37), (2048, 20)]


@pytest.mark.parametrize("params", PAIRWISE_GRID, ids=grid_id)
def test_prefill_grid(params):
    block_size, head_dim, group, dtype = params
    case = make_case(_chunks(block_size), block_size, 1, group, head_dim, dtype,
                     seed=block_size + head_dim + group)
    out, ref = _run(case, head_dim ** -0.5)
    check("prefill_attention", out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_several_kv_heads(dtype):
    case = make_case([(5, 5), (40, 17), (70, 1)], 16, 2, 4, 64, dtype, seed=11)
    out, ref = _run(case, 0.125)
    check("prefill_attention", out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sliding_window,soft_cap", [(16, None), (None, 5.0), (50, 30.0)])
def test_prefill_window_and_soft_cap(sliding_window, soft_cap, dtype):
    case = make_case([(1, 1), (20, 20), (150, 70), (90, 1)], 16, 1, 4, 64, dtype, seed=13)
    out, ref = _run(case, 0.5, sliding_window, soft_cap)
    check("prefill_attention", out, ref, dtype)


def test_prefill_odd_shapes():
    case = make_case([(1, 1), (30, 30), (90, 20)], 16, 3, 3, 80, torch.float32, seed=19)
    out, ref = _run(case, 80 ** -0.5)
    check("prefill_attention", out, ref, torch.float32)


def test_prefill_huge_poison_and_fp16():
    case = make_case([(3, 3), (33, 10), (65, 65)], 32, 1, 4, 128, torch.float16, seed=17,
                     poison=6e4)
    out, ref = _run(case, 128 ** -0.5)
    check("prefill_attention", out, ref, torch.float16)


@pytest.mark.slow
@pytest.mark.parametrize("params", FULL_GRID, ids=grid_id)
def test_prefill_full_grid(params):
    block_size, head_dim, group, dtype = params
    seqs = _chunks(block_size) + [(700, 700), (2048, 130)]
    case = make_case(seqs, block_size, 2, group, head_dim, dtype, seed=block_size * head_dim)
    out, ref = _run(case, head_dim ** -0.5)
    check("prefill_attention", out, ref, dtype)
