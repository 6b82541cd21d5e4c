"""Engine configuration: vLLM's argument names, validated once, in one place."""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field, fields

import torch

from pagedllm.kernels.kv_fp8 import KV_CACHE_DTYPES
from pagedllm.names import reject_unknown
from pagedllm.pooling.config import RUNNERS, PoolerConfig

_DTYPES = {
    "half": torch.float16, "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float": torch.float32, "float32": torch.float32, "fp32": torch.float32,
}
GiB = 1 << 30
logger = logging.getLogger(__name__)


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


MODEL_IMPLS = ("auto", "native", "transformers")
TOKENIZER_MODES = ("auto", "slow", "hf")
DEVICES = ("auto", "cpu", "cuda")
EXECUTOR_BACKENDS = (None, "uni", "mp", "ray", "external_launcher")  # vLLM's names
PARALLEL_BACKENDS = (None, "mp", "ray")  # what runs tensor_parallel_size > 1 (None: mp)
BLOCK_SIZES = (8, 16, 32, 64, 128)
QUANTIZATION_METHODS = (None, "gguf", "gptq", "awq", "fp8")  # vLLM's names; None: the checkpoint decides
STATS_LOG_INTERVAL_S = 10.0  # vLLM's LoggingStatLogger interval


def arg(default=dataclasses.MISSING, *, help: str, **cli):
    """A field and its one help text; ``cli`` holds argparse extras (``flags``, ``choices``, ``nargs``, ``type``).

    The CLI (``entrypoints/cli_args.py``) and docs/engine_args.md are generated from these.
    """
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class EngineConfig:
    """Every engine argument a user may pass to ``LLM(...)`` or ``pagedllm serve`` (vLLM's ``EngineArgs``)."""

    model: str = arg(help="model name (hub id), local folder or .gguf file")
    tokenizer: str | None = arg(None, help="tokenizer name or folder (default: the model's)")
    tokenizer_mode: str = arg("auto", choices=TOKENIZER_MODES,
                              help="auto: the fast tokenizer when there is one; slow: the Python one; hf: as auto")
    trust_remote_code: bool = arg(False, help="allow a model folder's own configuration code (e.g. ChatGLM)")
    dtype: str | torch.dtype = arg("auto", help="auto (bf16 on CPUs with AVX512-BF16/AMX, else fp32; on GPU the "
                                               "checkpoint's half type), bfloat16, float16 or float32")
    max_model_len: int | None = arg(None, help="context length (default: the model's, capped to what the KV "
                                               "cache holds)")
    seed: int = arg(0, help="random seed")
    download_dir: str | None = arg(None, help="where hub downloads go (default: the Hugging Face cache)")
    revision: str | None = arg(None, help="hub revision (branch, tag or commit) of the model")
    tokenizer_revision: str | None = arg(None, help="hub revision of the tokenizer")
    block_size: int = arg(16, choices=BLOCK_SIZES, help="KV-cache block size in tokens")
    max_num_seqs: int = arg(256, help="most sequences in one engine step")
    max_num_batched_tokens: int | None = arg(None, help="token budget of one engine step (default: 2048, or "
                                                        "max_model_len when chunked prefill is off)")
    max_waiting_requests: int | None = arg(None, help="most requests waiting to be scheduled (admitted but not "
                                                       "yet running); past it the server answers 503 with "
                                                       "Retry-After (default: no bound; LLM(...) offline ignores "
                                                       "it)")
    enable_prefix_caching: bool = arg(True, help="reuse KV blocks of shared prompt prefixes")
    enable_chunked_prefill: bool = arg(True, help="split long prompts over steps, sharing them with decodes")
    gpu_memory_utilization: float = arg(0.9, help="fraction of GPU memory for weights, activations and KV cache "
                                                  "(GPU only; unused when kv_cache_memory is given)")
    kv_cache_memory: int | str | None = arg(None, type="bytes", help="KV-cache size in bytes, or a size string "
                                                                     "such as 2G / 512MiB (default: 4G on CPU, "
                                                                     "from gpu_memory_utilization on GPU)")
    swap_space: float = arg(4, help="CPU swap space in GiB for preempted GPU blocks (no effect yet: swap_space "
                                    "takes effect with issue 19)")
    enforce_eager: bool = arg(False, help="run every decode step through the model's modules: no CUDA graphs on "
                                          "CUDA, no flat kernel-call decode on CPU (models/llama_cpu_decode.py)")
    device: str = arg("auto", choices=DEVICES, help="auto: cuda when available, else cpu")
    attention_backend: str | None = arg(None, help="force an attention backend: triton, cpu or torch (default: "
                                                   "triton on CUDA, cpu on CPU when its kernel builds, else torch)")
    disable_custom_all_reduce: bool = arg(False, help="vLLM's switch off its custom all-reduce kernel (no effect: "
                                                      "ranks all-reduce through torch.distributed)")
    distributed_executor_backend: str | None = arg(None, help="vLLM's worker launcher for tensor_parallel_size > 1: "
                                                              "mp (local worker processes, the default) or ray (Ray "
                                                              "actors, on RAY_ADDRESS's cluster or a local one; "
                                                              "pagedllm[ray]); uni, mp, ray or external_launcher "
                                                              "with one rank (no effect: it runs in-process)")
    cpu_offload_gb: float = arg(0, help="GiB of weights vLLM keeps in host memory (no effect: on CPU the weights are "
                                        "there already; not implemented on GPU)")
    kv_cache_dtype: str = arg("auto", help="KV-cache element type: auto (the model's dtype); fp8 (alias fp8_e4m3): e4m3 "
                                   "values with one bf16 scale per token and KV head, ~1.9x the tokens in the same "
                                   "kv_cache_memory")
    num_gpu_blocks_override: int | None = arg(None, help="use this many KV-cache blocks instead of sizing the cache "
                                                         "from kv_cache_memory or gpu_memory_utilization (vLLM's "
                                                         "testing knob: equal block counts across kv_cache_dtype "
                                                         "settings)")
    enable_lora: bool = arg(False, help="serve PEFT LoRA adapters per request (LoRARequest; the server's "
                                        "--lora-modules) next to the base model, in one batch")
    max_loras: int = arg(1, help="most adapters in one engine step (GPU/CPU slots; requests for another adapter "
                                 "wait for a free slot); only with enable_lora")
    max_lora_rank: int = arg(16, help="largest adapter rank accepted (slot buffers are sized for it); only with "
                                      "enable_lora")
    max_cpu_loras: int | None = arg(None, help="adapters kept loaded in host memory, least recently used dropped "
                                               "first (default: max_loras); only with enable_lora")
    tensor_parallel_size: int = arg(1, flags=("-tp",), help="tensor-parallel ranks, one local process each (mp "
                                                             "executor, gloo on CPU, NCCL on CUDA); the model's "
                                                             "attention heads must divide by it")
    pipeline_parallel_size: int = arg(1, flags=("-pp",), help="pipeline-parallel stages: each holds a contiguous "
                                                               "run of the layers (vLLM's split, or "
                                                               "VLLM_PP_LAYER_PARTITION) and its KV cache; a step "
                                                               "runs in micro-batches through them; combines with "
                                                               "tensor_parallel_size (TP ranks per stage)")
    quantization: str | None = arg(None, flags=("-q",), help="None: the checkpoint decides (a GGUF file or a "
                                                             "GPTQ/AWQ/fp8 checkpoint runs quantized, its weights "
                                                             "kept packed); gguf, gptq, awq: the same, and an error "
                                                             "if the checkpoint is not of that format; fp8: an fp8 "
                                                             "checkpoint, or a bf16/fp16/fp32 one quantized to "
                                                             "float8_e4m3fn weights (per-channel scales) at load")
    dequantize_gguf: bool = arg(False, help="load a GGUF file's weights dequantized to dense float tensors (the "
                                            "pre-issue-22 path, read by the Hugging Face parity tests) instead of "
                                            "running them quantized")
    disable_log_stats: bool = arg(True, help=f"do not log engine stats (throughput, running and waiting requests, "
                                             f"KV-cache usage) every {STATS_LOG_INTERVAL_S:g} s")
    served_model_name: str | list[str] | None = arg(None, nargs="+", help="model name(s) clients send; the first "
                                                                          "is the one answered (default: the model)")
    generation_config: str = arg("auto", help="auto: sampling defaults (temperature, top_p, top_k, min_p, "
                                              "repetition_penalty, max_new_tokens as max_tokens) from the model's "
                                              "generation_config.json when it has one; vllm: SamplingParams' own "
                                              "defaults; or a folder holding a generation_config.json")
    runner: str = arg("auto", choices=RUNNERS, help="generate: a language model; pooling: an embedding model "
                                                    "(LLM.embed, /v1/embeddings); auto: pooling for encoders (BERT, "
                                                    "RoBERTa, XLM-R) and sentence-transformers folders, else generate")
    pooler_config: PoolerConfig | dict | str | None = arg(
        None, type="json", help="how a pooling model pools, as JSON: pooling_type MEAN, CLS or LAST and normalize "
                                "true/false (default: the sentence-transformers files, else CLS for encoders and LAST "
                                "for decoders, normalized)")
    model_impl: str = arg("auto", choices=MODEL_IMPLS, help="auto: native when pagedllm has the architecture, else "
                                                            "transformers; native: pagedllm's own or an error; "
                                                            "transformers: Hugging Face's model on the paged cache")

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "EngineConfig":
        reject_unknown(kwargs, {f.name for f in fields(cls)} - {"model"}, "engine argument")
        config = cls(model=model, **kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if not isinstance(self.model, (str, os.PathLike)) or not str(self.model):
            raise ValueError(f"model must be a non-empty string (a hub id, folder or GGUF file), got {self.model!r}")
        self.model = str(self.model)
        _positive_int("block_size", self.block_size)
        if self.block_size not in BLOCK_SIZES:
            raise ValueError(f"block_size={self.block_size} is not supported; choose one of {_listed(BLOCK_SIZES)}")
        _positive_int("max_num_seqs", self.max_num_seqs)
        if self.max_num_batched_tokens is not None:
            _positive_int("max_num_batched_tokens", self.max_num_batched_tokens)
        if self.max_model_len is not None:
            _positive_int("max_model_len", self.max_model_len)
        if self.max_waiting_requests is not None:
            _positive_int("max_waiting_requests", self.max_waiting_requests)
        if not (0.0 < float(self.gpu_memory_utilization) <= 1.0):
            raise ValueError(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_cache_memory is not None:
            if isinstance(self.kv_cache_memory, str):  # "4G", "512MiB": the CLI's sizes, in Python too
                self.kv_cache_memory = parse_bytes(self.kv_cache_memory, "kv_cache_memory")
            _positive_int("kv_cache_memory", self.kv_cache_memory)
        if float(self.swap_space) < 0:
            raise ValueError(f"swap_space={self.swap_space} must be >= 0 (GiB)")
        if self.tokenizer_mode not in TOKENIZER_MODES:
            raise ValueError(f"tokenizer_mode={self.tokenizer_mode!r}; choose {_listed(TOKENIZER_MODES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}; choose {_listed(DEVICES)}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device='cuda' but {_no_cuda_reason()}; use device='cpu' (--device cpu) or 'auto'")
        _positive_int("tensor_parallel_size", self.tensor_parallel_size)
        _positive_int("pipeline_parallel_size", self.pipeline_parallel_size)
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            unsupported = " (e5m2 is not supported: e4m3's extra mantissa bit is worth more under per-row scales)" \
                if self.kv_cache_dtype == "fp8_e5m2" else ""
            raise ValueError(f"kv_cache_dtype={self.kv_cache_dtype!r} is not supported{unsupported}; use "
                             f"{_listed(KV_CACHE_DTYPES)}")
        if self.num_gpu_blocks_override is not None:
            _positive_int("num_gpu_blocks_override", self.num_gpu_blocks_override)
        _positive_int("max_loras", self.max_loras)
        _positive_int("max_lora_rank", self.max_lora_rank)
        if self.max_cpu_loras is not None:
            _positive_int("max_cpu_loras", self.max_cpu_loras)
            if self.max_cpu_loras < self.max_loras:
                raise ValueError(f"max_cpu_loras={self.max_cpu_loras} must be >= max_loras={self.max_loras} "
                                 "(every adapter in a step is also kept in host memory)")
        if float(self.cpu_offload_gb) < 0:
            raise ValueError(f"cpu_offload_gb={self.cpu_offload_gb} must be >= 0 (GiB)")
        if self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(f"quantization={self.quantization!r} is not supported in this release; use None (the "
                             "checkpoint decides), 'gguf' (a GGUF file, run quantized), 'gptq' or 'awq' (a "
                             "checkpoint whose quantization_config says so, run quantized on CPU) or 'fp8' (an "
                             "fp8 checkpoint, or a bf16/fp16/fp32 one quantized to fp8 weights at load)")
        if self.quantization == "gguf" and self.dequantize_gguf:
            raise ValueError("quantization='gguf' and dequantize_gguf=True contradict each other: the first runs the "
                             "GGUF blocks quantized, the second dense; leave quantization=None to load it dense")
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"distributed_executor_backend={self.distributed_executor_backend!r}; use one of "
                             f"{_listed(EXECUTOR_BACKENDS[1:])} (or leave it unset)")
        if self.world_size > 1 and self.distributed_executor_backend not in PARALLEL_BACKENDS:
            raise ValueError(f"distributed_executor_backend={self.distributed_executor_backend!r} with "
                             f"tensor_parallel_size={self.tensor_parallel_size}"
                             + (f" x pipeline_parallel_size={self.pipeline_parallel_size}"
                                if self.pipeline_parallel_size > 1 else "")
                             + ": several ranks run on mp (local processes) or ray (Ray actors) in this release; use "
                             "one of them, or leave it unset (mp)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        resolve_dtype(self.dtype, torch.device("cpu"))  # raises on a bad name
        if self.runner not in RUNNERS:
            raise ValueError(f"runner={self.runner!r}; choose {_listed(RUNNERS)}")
        self.pooler_config = PoolerConfig.coerce(self.pooler_config)
        if self.model_impl not in MODEL_IMPLS:
            raise ValueError(f"model_impl={self.model_impl!r}; choose {_listed(MODEL_IMPLS)}")

    @property
    def world_size(self) -> int:
        """Ranks: tensor_parallel_size per stage, pipeline_parallel_size stages."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)


_warned: set[str] = set()


def warn_without_effect(config: EngineConfig, device: torch.device) -> None:
    """Warn once per process, naming the argument, when a value the user set has no effect on ``device``.

    Only values that differ from the field's default count (vLLM's way): the default is no choice.
    """
    defaults = {f.name: f.default for f in fields(EngineConfig)}
    reasons = {"swap_space": "yet (preempted blocks are recomputed, not swapped to the host); swap_space takes "
                             "effect with issue 19"}
    if config.world_size == 1:
        reasons["distributed_executor_backend"] = ("with tensor_parallel_size=1 and pipeline_parallel_size=1 (one "
                                                   "rank, run in-process)")
    reasons["cpu_offload_gb"] = (f"on {device.type} (the weights live in host memory already)" if device.type != "cuda"
                                 else "yet (weight offloading is not implemented; all weights go to the GPU)")
    reasons["disable_custom_all_reduce"] = ("(there is no custom all-reduce kernel: ranks all-reduce through "
                                            "torch.distributed)")
    if not config.enable_lora:
        for name in ("max_loras", "max_lora_rank", "max_cpu_loras"):
            reasons[name] = "without enable_lora=True (--enable-lora)"
    if device.type not in ("cuda", "cpu"):
        reasons["enforce_eager"] = f"on {device.type} (decode steps are planned only on CUDA and CPU)"
    if device.type != "cuda":
        reasons["gpu_memory_utilization"] = f"on {device.type} (the KV cache there is sized by kv_cache_memory)"
    elif config.kv_cache_memory is not None:
        reasons["gpu_memory_utilization"] = "when kv_cache_memory is given (that sizes the KV cache)"
    for name, reason in reasons.items():
        value = getattr(config, name)
        if value != defaults[name] and name not in _warned:
            _warned.add(name)
            logger.warning("%s=%r is accepted but has no effect %s", name, value, reason)


def _no_cuda_reason() -> str:
    """Why ``torch.cuda.is_available()`` is False, in a few words (instead of torch's AssertionError)."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    return f"no CUDA GPU is visible to this torch ({torch.__version__}, CUDA {torch.version.cuda})"


def parse_bytes(text: str, name: str = "size") -> int:
    """``"2147483648"``, ``"2G"``, ``"512MiB"`` -> bytes (binary units: K, M, G, T), a ValueError naming ``name``."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    s = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1] if s and s[-1] in units else ""
    try:
        return int(float(s[:-1] if unit else s) * units[unit])
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a size (e.g. 2147483648, 2G, 512M)") from None


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")


def _listed(choices) -> str:
    """``(8, 16, 32)`` -> ``8, 16 or 32`` for error messages."""
    words = [str(c) for c in choices]
    return ", ".join(words[:-1]) + " or " + words[-1]
