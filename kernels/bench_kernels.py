"""GPU micro-benchmark: paged decode attention bandwidth against the device's copy bandwidth.

Decode attention is memory-bound (each K/V byte is read once per step), so the honest yardstick
is the bandwidth a plain device-to-device copy reaches on the same GPU. Run on a CUDA machine:

    python -m pagedllm.kernels.bench_kernels            # batch 64 x 2k context, bf16, d=128
    python -m pagedllm.kernels.bench_kernels --quick    # a smaller, faster smoke run
"""
from __future__ import annotations

import argparse

import torch


def _bench(fn, warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds per call (CUDA events around each call, after warm-up)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def decode_case(batch: int, context: int, num_heads: int, num_kv_heads: int, head_dim: int,
                block_size: int, dtype: torch.dtype):
    """A full paged cache with shuffled block tables, every sequence ``context`` tokens long."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device="cuda",
                          dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    tables = torch.randperm(num_blocks, device="cuda").view(batch, blocks_per_seq).int()
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, num_heads, head_dim, device="cuda", dtype=dtype)
    return q, k_cache, v_cache, tables, lens


def run(batch: int, context: int, num_heads: int, num_kv_heads: int, head_dim: int,
        block_size: int, dtype: torch.dtype, with_reference: bool = True) -> list[dict]:
    from pagedllm.kernels import reference
    from pagedllm.kernels.decode_attention import choose_num_splits, paged_decode_attention

    q, kc, vc, tables, lens = decode_case(batch, context, num_heads, num_kv_heads, head_dim,
                                          block_size, dtype)
    scale = head_dim ** -0.5
    kv_bytes = 2 * batch * context * num_kv_heads * head_dim * kc.element_size()
    out = torch.empty_like(q)
    ws: dict = {}
    rows = []
    auto = choose_num_splits(batch, num_kv_heads, context)
    for label, splits in ((f"triton decode (auto: {auto} split)", None),
                          ("triton decode (1 split)", 1)):
        if splits == 1 and auto == 1:
            continue
        ms = _bench(lambda: paged_decode_attention(q, kc, vc, tables, lens, scale,
                                                   max_context_len=context, out=out,
                                                   num_splits=splits, workspace=ws))
        rows.append({"kernel": label, "ms": ms, "gbps": kv_bytes / ms / 1e6})
    if with_reference:
        ms = _bench(lambda: reference.paged_decode_attention(q, kc, vc, tables, lens, scale,
                                                             max_context_len=context),
                    warmup=2, rep=5)
        rows.append({"kernel": "torch reference twin", "ms": ms, "gbps": kv_bytes / ms / 1e6})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels needs a CUDA device")
    copy = copy_bandwidth(1 << 28 if args.quick else 1 << 30)
    shapes = [(8, 512)] if args.quick else [(64, 2048), (1, 32768), (8, 8192)]
    print(f"device: {torch.cuda.get_device_name()}; device-to-device copy: {copy:.0f} GB/s")
    print("decode attention, bf16, 32 query heads / 8 KV heads, head_dim 128, block 16")
    print(f"{'batch x context':>16} | {'kernel':<30} | {'ms':>8} | {'GB/s':>7} | {'% copy':>6}")
    for batch, context in shapes:
        for row in run(batch, context, 32, 8, 128, 16, torch.bfloat16,
                       with_reference=batch * context <= 64 * 2048):
            print(f"{f'{batch} x {context}':>16} | {row['kernel']:<30} | {row['ms']:8.3f} | "
                  f"{row['gbps']:7.0f} | {100 * row['gbps'] / copy:5.0f}%")


if __name__ == "__main__":
    main()
