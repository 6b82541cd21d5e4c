"""Engine configuration: vLLM's argument names, validated once, in one place."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields

import torch

_DTYPES = {
    "half": torch.float16, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float": torch.float32, "float32": torch.float32, "fp32": torch.float32,
}
GiB = 1 << 30


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, model_dtype: torch.dtype | None = None) -> torch.dtype:
    """``auto`` = bf16 on CPUs with AVX512-BF16/AMX (else fp32); on GPU the checkpoint's half type."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype={dtype} is not supported; choose auto, half, float16, bfloat16 or float32")
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a string or torch.dtype, got {type(dtype).__name__}")
    key = dtype.lower()
    if key == "auto":
        if device.type == "cuda":
            if model_dtype in (torch.float16, torch.bfloat16):
                return model_dtype
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if key not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of auto, half, float16, bfloat16, float32")
    return _DTYPES[key]


@dataclass
class EngineConfig:
    """Every engine argument a user may pass to ``LLM(...)`` or ``pagedllm serve``."""

    model: str
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    trust_remote_code: bool = False
    dtype: str | torch.dtype = "auto"
    max_model_len: int | None = None
    seed: int = 0
    download_dir: str | None = None
    revision: str | None = None
    tokenizer_revision: str | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory: int | None = None
    swap_space: float = 4
    enforce_eager: bool = False
    device: str = "auto"
    attention_backend: str | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    quantization: str | None = None
    disable_log_stats: bool = True
    served_model_name: str | list[str] | None = None
    model_impl: str = "auto"  # auto (native when we have one, else transformers) | native | transformers

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"unexpected engine argument(s) {unknown}; accepted: {sorted(known - {'model'})}")
        config = cls(model=model, **kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model):
            raise ValueError(f"model must be a non-empty string (a hub id, folder or GGUF file), got {self.model!r}")
        self.model = str(self.model)
        _positive_int("block_size", self.block_size)
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size={self.block_size} is not supported; choose 8, 16, 32, 64 or 128")
        _positive_int("max_num_seqs", self.max_num_seqs)
        if self.max_num_batched_tokens is not None:
            _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if not (0.0 < float(self.gpu_memory_utilization) <= 1.0):
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_cache_memory is not None:
            _positive_int("kv_cache_memory", self.kv_cache_memory)
        if float(self.swap_space) < 0:
            raise ValueError(f"swap_space={self.swap_space} must be >= 0 (GiB)")
        if self.tokenizer_mode not in ("auto", "slow", "hf"):
            raise ValueError(f"tokenizer_mode={self.tokenizer_mode!r}; choose auto, slow or hf")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose auto, cpu or cuda")
        if self.tensor_parallel_size != 1 or self.pipeline_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size={self.tensor_parallel_size}, pipeline_parallel_size="
                f"{self.pipeline_parallel_size}: only 1 is supported in this release (one worker)")
        if self.quantization not in (None, "gguf"):
            raise ValueError(f"quantization={self.quantization!r} is not supported; GGUF checkpoints are "
                             "dequantized at load time (quantization=None or 'gguf')")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        resolve_dtype(self.dtype, torch.device("cpu"))  # raises on a bad name
        if self.model_impl not in ("auto", "native", "transformers"):
            raise ValueError(f"model_impl={self.model_impl!r}; choose auto, native or transformers")

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
