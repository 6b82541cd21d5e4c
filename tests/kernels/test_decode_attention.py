"""Triton paged decode attention vs its reference twin evaluated in float64."""
import pytest
import torch
from paged_cases import FULL_GRID, PAIRWISE_GRID, boundary_lengths, check, grid_id, make_case

from pagedllm.kernels import reference
from pagedllm.kernels.decode_attention import choose_num_splits, paged_decode_attention


def _run(case, scale, sliding_window=None, soft_cap=None, num_splits=None):
    out = paged_decode_attention(case.q, case.k_cache, case.v_cache, case.block_tables,
                                 case.context_lens, scale, sliding_window, soft_cap,
                                 num_splits=num_splits)
    ref = reference.paged_decode_attention(
        case.q.double(), case.k_cache.double(), case.v_cache.double(), case.block_tables,
        case.context_lens, scale, sliding_window, soft_cap)
    return out, ref


def _grid_case(block_size, head_dim, group, dtype, num_splits):
    # Lengths 1..2048 around block boundaries, shuffled blocks, NaN in every unused slot.
    seqs = [(c, 1) for c in boundary_lengths(block_size)]
    case = make_case(seqs, block_size, 2, group, head_dim, dtype,
                     seed=block_size + head_dim + group)
    out, ref = _run(case, head_dim ** -0.5, num_splits=num_splits)
    check("decode_attention", out, ref, dtype)


@pytest.mark.parametrize("params", PAIRWISE_GRID, ids=grid_id)
def test_decode_grid(params):
    _grid_case(*params, num_splits=2)  # 2 splits of 1024: short sequences leave one empty


@pytest.mark.slow
@pytest.mark.parametrize("params", FULL_GRID, ids=grid_id)
def test_decode_full_grid(params):
    _grid_case(*params, num_splits=None)


@pytest.mark.parametrize("num_splits", [1, 2, 7])
def test_decode_split_k_matches_single_pass(num_splits):
    case = make_case([(1, 1), (40, 1), (700, 1), (1000, 1)], 16, 2, 4, 64, torch.float32, seed=3)
    out, ref = _run(case, 0.125, num_splits=num_splits)
    check("decode_attention", out, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sliding_window,soft_cap", [(64, None), (None, 5.0), (100, 30.0)])
def test_decode_window_and_soft_cap(sliding_window, soft_cap, dtype):
    case = make_case([(1, 1), (63, 1), (64, 1), (65, 1), (600, 1)], 16, 2, 4, 64, dtype, seed=5)
    out, ref = _run(case, 0.125 * 4, sliding_window, soft_cap, num_splits=3)
    check("decode_attention", out, ref, dtype)


def test_decode_huge_poison_and_mqa():
    # Huge (finite) values in unused slots; one KV head shared by 8 query heads (MQA).
    case = make_case([(5, 1), (33, 1), (129, 1)], 32, 1, 8, 128, torch.float32, seed=7,
                     poison=1e30)
    out, ref = _run(case, 128 ** -0.5)
    check("decode_attention", out, ref, torch.float32)


def test_decode_odd_shapes():
    # Non-power-of-two group (3 query heads per KV head), head_dim 80, 3 KV heads.
    case = make_case([(1, 1), (80, 1), (161, 1)], 16, 3, 3, 80, torch.float32, seed=8)
    out, ref = _run(case, 80 ** -0.5, num_splits=2)
    check("decode_attention", out, ref, torch.float32)


def test_decode_fp16():
    case = make_case([(17, 1), (300, 1)], 16, 2, 4, 64, torch.float16, seed=9)
    out, ref = _run(case, 0.125, num_splits=2)
    check("decode_attention", out, ref, torch.float16)


def test_choose_num_splits():
    assert choose_num_splits(64, 8, 2048) == 1  # the GPU is already full
    assert choose_num_splits(1, 8, 100) == 1  # too short to split
    assert choose_num_splits(1, 8, 32768) == 33  # few programs: split the context


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_decode_random_sweep(group, dtype):
    g = torch.Generator().manual_seed(group)
    lens = torch.randint(1, 2049, (24,), generator=g).tolist()
    for block_size in (16, 32):
        for head_dim in (64, 128):
            case = make_case([(c, 1) for c in lens], block_size, 4, group, head_dim, dtype,
                             seed=block_size * head_dim)
            out, ref = _run(case, head_dim ** -0.5)
            check("decode_attention", out, ref, dtype)
