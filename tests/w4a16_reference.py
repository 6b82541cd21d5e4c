"""A float64 reference for GPTQ/AWQ tensors, written from the formats' specs, and random packed tensors.

The reference reads each weight element by element, straight from the published bit layout (word,
shift, mask; the group from g_idx), with none of the reshapes the code under test uses. Packed
tensors are random int32 bit patterns, so every code and zero value occurs. A uniquely named module
(as ``model_fixtures``) shared by tests/quantization and tests/kernels.
"""
import numpy as np
import torch

AWQ_COLUMN_IN_SLOT = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ: bits 4p..4p+3 of a word hold column AWQ_COLUMN_IN_SLOT[p]


def bits_of(word: np.ndarray, shift: np.ndarray, bits: int) -> np.ndarray:
    return (word.astype(np.int64) & 0xFFFFFFFF) >> shift & (2 ** bits - 1)


def reference_gptq(qweight, qzeros, scales, g_idx, bits, zero_offset) -> np.ndarray:
    """float64 [out, in]: w[o, i] = (q(i, o) - z(g_idx[i], o)) * scales[g_idx[i], o]."""
    pack = 32 // bits
    qw, qz, s, g = qweight.numpy(), qzeros.numpy(), scales.double().numpy(), g_idx.numpy()
    i, o = np.meshgrid(np.arange(qw.shape[0] * pack), np.arange(qw.shape[1]), indexing="ij")
    q = bits_of(qw[i // pack, o], bits * (i % pack), bits)
    z = bits_of(qz[g[i], o // pack], bits * (o % pack), bits) + zero_offset
    return ((q - z) * s[g[i], o]).T


def reference_awq(qweight, qzeros, scales, group_size) -> np.ndarray:
    slot_of_column = {c: p for p, c in enumerate(AWQ_COLUMN_IN_SLOT)}
    qw, qz, s = qweight.numpy(), qzeros.numpy(), scales.double().numpy()
    i, o = np.meshgrid(np.arange(qw.shape[0]), np.arange(qw.shape[1] * 8), indexing="ij")
    shift = 4 * np.vectorize(slot_of_column.get)(o % 8)
    g = i // (qw.shape[0] if group_size == -1 else group_size)
    q = bits_of(qw[i, o // 8], shift, 4)
    z = bits_of(qz[g, o // 8], shift, 4)
    return ((q - z) * s[g, o]).T


def random_words(*shape, gen) -> torch.Tensor:
    return torch.randint(-2 ** 31, 2 ** 31, shape, generator=gen, dtype=torch.int64).to(torch.int32)


def gptq_tensors(in_features, out_features, bits, group_size, desc_act, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pack = 32 // bits
    group = in_features if group_size == -1 else group_size
    groups = -(-in_features // group)
    g_idx = torch.arange(in_features, dtype=torch.int32) // group
    if desc_act:
        g_idx = g_idx[torch.randperm(in_features, generator=gen)]
    scales = (torch.rand(groups, out_features, generator=gen) * 0.02 + 1e-3).half()
    qweight = random_words(in_features // pack, out_features, gen=gen)
    return qweight, random_words(groups, out_features // pack, gen=gen), scales, g_idx


def awq_tensors(in_features, out_features, group_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    groups = -(-in_features // (in_features if group_size == -1 else group_size))
    scales = (torch.rand(groups, out_features, generator=gen) * 0.02 + 1e-3).half()
    qweight = random_words(in_features, out_features // 8, gen=gen)
    return qweight, random_words(groups, out_features // 8, gen=gen), scales


def product_bound(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """k float32 roundings of the sum of |x||w| (the error bound of a float32 dot product of length k)."""
    return x.shape[1] * 2.0 ** -24 * (np.abs(x) @ np.abs(w).T) + 1e-30
