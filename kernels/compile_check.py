"""Compile every kernel variant the wrappers launch for a GPU target, on a machine without one.

The CPU interpreter (``TRITON_INTERPRET=1``) runs kernel bodies as Python and skips the
compiler's checks (non-constexpr globals, ``tl.dot`` shape limits, type unification across
branches), so this catches what only a GPU session would otherwise find. The wrappers run on
small CPU tensors with the kernels swapped for recorders; each recorded launch is then compiled
TTIR -> PTX -> cubin with the ptxas bundled in the triton wheel. Must run without
``TRITON_INTERPRET`` (the tests start it in a subprocess):

    python -m pagedllm.kernels.compile_check --arch 90 [--dtypes bfloat16]
"""
from __future__ import annotations

import argparse
import os

import torch

_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
          torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8"}


def _kernel_table():
    from pagedllm.kernels import (decode_attention, fp8_matmul, fused_ops, gguf_matmul, prefill_attention, store_kv,
                                  w4a16_matmul)

    return {decode_attention: ["_decode_kernel", "_reduce_kernel"],
            prefill_attention: ["_prefill_kernel"], store_kv: ["_store_kv_kernel"],
            fused_ops: ["_rms_norm_kernel", "_rotary_kernel", "_silu_and_mul_kernel"],
            w4a16_matmul: ["_w4a16_matmul_kernel"], fp8_matmul: ["_fp8_matmul_kernel"],
            gguf_matmul: ["_gguf_matmul_kernel"]}


class _Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.kernel, args, kwargs))


def _signature(fn, args, kwargs) -> dict:
    sig = {}
    for name, a in zip(fn.arg_names, args):
        if isinstance(a, torch.Tensor):
            sig[name] = "*" + _TYPES[a.dtype]
        else:
            sig[name] = "i32" if isinstance(a, int) else "fp32"
    sig.update({name: "constexpr" for name in kwargs})
    return sig


def _launch_all(dtype: torch.dtype) -> None:
    """Call every wrapper in each of its configurations (window, soft cap, splits, ...)."""
    from pagedllm.kernels import decode_attention, fused_ops, prefill_attention, store_kv

    kc = torch.zeros(8, 16, 2, 128, dtype=dtype)
    q = torch.zeros(3, 8, 128, dtype=dtype)
    bt = torch.zeros(3, 20, dtype=torch.int32)
    cl = torch.tensor([1, 20, 300], dtype=torch.int32)
    qsl = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    for window, cap in ((None, None), (16, 5.0)):
        for splits in (1, 3):
            decode_attention.paged_decode_attention(q, kc, kc, bt, cl, 0.1, window, cap,
                                                    max_context_len=300, num_splits=splits)
        for max_query_len in (1, 40):
            prefill_attention.paged_prefill_attention(q, kc, kc, bt, qsl, cl, 0.1, window, cap,
                                                      max_query_len=max_query_len)
    store_kv.store_kv(q[:, :2], q[:, :2], kc, kc, torch.zeros(3, dtype=torch.int64))
    x = torch.zeros(4, 96, dtype=dtype)
    fused_ops.rms_norm(x, x[0], 1e-6)
    fused_ops.rms_norm(x, x[0], 1e-6, x)
    fused_ops.silu_and_mul(x)
    pos = torch.zeros(4, dtype=torch.int64)
    for rotary_dim, neox in ((32, True), (16, False)):
        fused_ops.rotary(pos, x.view(4, 3, 32)[:, :2], x.view(4, 3, 32)[:, 2:],
                         torch.zeros(10, rotary_dim, dtype=dtype), 32, rotary_dim, neox)
    from pagedllm.kernels import w4a16_matmul
    from pagedllm.quantization.w4a16_weight import W4A16Weight

    starts = torch.tensor([0, 32, 64, 96], dtype=torch.int32)
    for bits in (4, 8):
        weight = W4A16Weight(torch.zeros(64, 96 * bits // 8, dtype=torch.uint8), torch.ones(64, 3), torch.zeros(64, 3),
                             starts, None, bits, 64, 96)
        for rows in (3, 40):  # decode-sized and prefill-sized row tiles
            w4a16_matmul.matmul(torch.zeros(rows, 96, dtype=dtype), weight)
    from pagedllm.kernels import fp8_matmul

    for rows in (3, 40):
        fp8_matmul.matmul(torch.zeros(rows, 96, dtype=dtype), torch.zeros(64, 96, dtype=torch.uint8), torch.ones(64))
    from pagedllm.kernels import gguf_matmul

    for qtype, block, block_bytes in gguf_matmul.TYPES.values():
        for rows in (3, 40):
            gguf_matmul.matmul(torch.zeros(rows, 256, dtype=dtype),
                               torch.zeros(64, 256 // block * block_bytes, dtype=torch.uint8), qtype, 256)


def compile_all(arch: int = 90, dtypes=(torch.bfloat16, torch.float32, torch.float16)) -> list:
    """Compile each distinct launched variant; returns ``[(kernel, constexprs, metadata)]``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check must run without TRITON_INTERPRET")
    launches: list = []
    table = _kernel_table()
    originals = {(m, n): getattr(m, n) for m, names in table.items() for n in names}
    for (module, name), kernel in originals.items():
        setattr(module, name, _Recorder(kernel, launches))
    try:
        for dtype in dtypes:
            _launch_all(dtype)
    finally:
        for (module, name), kernel in originals.items():
            setattr(module, name, kernel)
    results, seen = [], set()
    for kernel, args, kwargs in launches:
        sig = _signature(kernel, args, kwargs)
        key = (kernel.__name__, tuple(sorted(sig.items())),
               tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key in seen:
            continue
        seen.add(key)
        compiled = triton.compile(ASTSource(kernel, sig, kwargs),
                                  target=GPUTarget("cuda", arch, 32))
        results.append((kernel.__name__, kwargs, compiled.metadata))
    missing = {n for _, n in originals} - {name for name, _, _ in results}
    if missing:
        raise RuntimeError(f"never launched, so not compiled: {sorted(missing)}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80")
    parser.add_argument("--dtypes", default="bfloat16,float32,float16",
                        help="comma-separated input dtypes to launch with")
    args = parser.parse_args(argv)
    results = compile_all(args.arch, [getattr(torch, d) for d in args.dtypes.split(",")])
    for name, kwargs, meta in results:
        flags = {k: v for k, v in kwargs.items() if not k.startswith("BLOCK")}
        print(f"sm_{args.arch} {name:<22} shared={getattr(meta, 'shared', '?'):>6} {flags}")
    print(f"compiled {len(results)} kernel variants for sm_{args.arch}")


if __name__ == "__main__":
    main()
