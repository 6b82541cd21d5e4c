"""The synchronous engine: add requests, ``step()`` until done, read RequestOutputs.

One step = schedule -> model runner (forward + sample, returns a ``SamplerOutput``) -> apply
it (append tokens, grammar state, fork ``n`` samples, free blocks of finished sequences) with the
``OutputProcessor`` (detokenize, stop checks, RequestOutputs). Every front end (LLM, the server,
the adapters) drives this loop.
"""
from __future__ import annotations

import copy
import gc
import itertools
import logging
import os
import time
from dataclasses import dataclass

import torch
from transformers import AutoConfig, GenerationConfig

from pagedllm.config import STATS_LOG_INTERVAL_S, EngineConfig, GiB, resolve_dtype, warn_without_effect
from pagedllm.distributed import check_tensor_parallel
from pagedllm.engine.block_manager import BlockManager, NoKVCache
from pagedllm.engine.executor import RunnerSpec, make_executor
from pagedllm.models.pipeline import PARTITION_ENV, num_layers_of, partition
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.engine.scheduler import Scheduler
from pagedllm.engine.sequence import Sequence
from pagedllm.engine.sequence_group import SequenceGroup
from pagedllm.engine.stat_logger import StatLogger
from pagedllm.loader import resolve_model
from pagedllm.sampling_params import generation_config_defaults
from pagedllm.models.registry import resolve_model_class
from pagedllm.quantization.gguf_model import quantized_gguf
from pagedllm.quantization.fp8_model import checkpoint_fp8
from pagedllm.quantization.w4a16_model import checkpoint_w4a16
from pagedllm.outputs import PoolingOutput, PoolingRequestOutput, RequestOutput
from pagedllm.pooling.config import resolve_pooler, resolve_runner, sentence_transformers_max_length
from pagedllm.pooling.params import PoolingParams
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.tokenizer import IncrementalDetokenizer, load_tokenizer
from pagedllm.worker.cache_engine import DEFAULT_CPU_KV_CACHE_BYTES, bytes_per_block

logger = logging.getLogger(__name__)
POOLING_TOKEN_BUDGET = 2048  # default tokens per step of a pooling model: MiniLM on 2 cores peaked there (bench embed: 1024-8192 tried)


@dataclass
class EngineStats:
    """Counters the metrics endpoint and benchmarks read."""

    num_steps: int = 0
    prompt_tokens: int = 0  # tokens fed to the model as prefill (after prefix-cache hits)
    generation_tokens: int = 0
    max_batch_size: int = 0  # most sequences in one step
    finished_requests: int = 0
    aborted_requests: int = 0


class ContextWindowError(ValueError):
    """A prompt, or prompt + ``max_tokens``, that does not fit ``max_model_len``; ``param`` names the culprit."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def fit_context(prompt_len: int, max_tokens: int | None, max_model_len: int, *, strict: bool = True) -> int:
    """The one rule for the context window, offline (``LLM``) and served (``/v1/*``), as vLLM's server:
    the prompt must leave room for one token, and prompt + ``max_tokens`` must fit ``max_model_len``
    (``strict``; else ``max_tokens`` is capped to the room left). ``max_tokens=None`` means all the room.
    Returns the ``max_tokens`` to generate; raises ``ContextWindowError``."""
    if prompt_len >= max_model_len:
        raise ContextWindowError(f"This model's maximum context length is {max_model_len} tokens "
                                 f"(max_model_len). However, your prompt has {prompt_len} tokens; at least one "
                                 f"token must be left to generate.", param="prompt")
    room = max_model_len - prompt_len
    if max_tokens is None:
        return room
    if prompt_len + max_tokens > max_model_len:
        if not strict:
            return room
        raise ContextWindowError(f"This model's maximum context length is {max_model_len} tokens "
                                 f"(max_model_len). However, you requested {prompt_len + max_tokens} tokens "
                                 f"({prompt_len} in the prompt, {max_tokens} in the completion). Please reduce "
                                 f"the prompt or max_tokens.", param="max_tokens")
    return max_tokens


class LLMEngine:
    def __init__(self, config: EngineConfig):
        t0 = time.perf_counter()
        self.config = config
        torch.manual_seed(config.seed)
        resolved = resolve_model(config.model, revision=config.revision, download_dir=config.download_dir)
        self.model_path = resolved.path
        self.hf_config = AutoConfig.from_pretrained(resolved.path, trust_remote_code=config.trust_remote_code)
        # Sampling defaults for requests that leave a field unset (vLLM's default_sampling_params).
        self.default_sampling_params = generation_config_defaults(config.generation_config, resolved.path)
        tok_path = config.tokenizer or resolved.path
        if config.tokenizer and config.tokenizer != config.model:
            tok_path = resolve_model(config.tokenizer, revision=config.tokenizer_revision,
                                     download_dir=config.download_dir).path
        self.tokenizer = load_tokenizer(tok_path, tokenizer_mode=config.tokenizer_mode,
                                        trust_remote_code=config.trust_remote_code)
        self.device = config.torch_device
        warn_without_effect(config, self.device)
        self.dtype = resolve_dtype(config.dtype, self.device, checkpoint_dtype(self.hf_config))
        model_cls = resolve_model_class(self.hf_config, config.model_impl)
        self.runner_type = resolve_runner(config.runner, model_cls, resolved.path)
        self.max_model_len = self._derive_max_model_len(model_cls, resolved.path)
        gguf_file = quantized_gguf(config, resolved, self.device)
        fp8 = checkpoint_fp8(config, self.hf_config, resolved, self.device)
        w4a16 = checkpoint_w4a16(config, self.hf_config, resolved, self.device)
        self._check_parallel(model_cls, gguf_file, w4a16)
        # the executor builds the model runner(s): in this process for one rank, plus worker processes for more
        self.executor = make_executor(config, RunnerSpec(self.hf_config, resolved.path, self.dtype, self.device,
                                                         self.max_model_len, config.block_size,
                                                         config.attention_backend, config.model_impl,
                                                         config.trust_remote_code, gguf_file, w4a16, fp8=fp8,
                                                         kv_cache_dtype=config.kv_cache_dtype,
                                                         pipeline_parallel_size=config.pipeline_parallel_size,
                                                         pp_layer_partition=os.environ.get(PARTITION_ENV),
                                                         enforce_eager=config.enforce_eager),
                                      model_cls)
        self.runner = self.executor.driver_runner  # rank 0's runner: shapes, sampling, LoRA
        try:
            num_blocks = self._set_up_cache_and_scheduler(model_cls, resolved.path)
        except BaseException:
            self.executor.shutdown()  # a failed start leaves no worker process behind
            raise
        self.eos_token_ids = self._eos_token_ids()
        self.output_processor = OutputProcessor(self.tokenizer, self.max_model_len)
        self.sequences: dict[str, Sequence] = {}
        self.stats = EngineStats()
        self.stat_logger = None if config.disable_log_stats else StatLogger(STATS_LOG_INTERVAL_S)
        self._counter = itertools.count()
        self.load_time = time.perf_counter() - t0
        logger.info("engine ready in %.2fs: %s, dtype=%s, device=%s, %d KV blocks (%d tokens, kv_cache_dtype=%s; "
                    "maximum concurrency for %d tokens per request: %.2fx), max_model_len=%d",
                    self.load_time, config.model, self.dtype, self.device, num_blocks,
                    num_blocks * config.block_size, config.kv_cache_dtype, self.max_model_len,
                    num_blocks * config.block_size / max(self.max_model_len, 1), self.max_model_len)

    # ---- set-up --------------------------------------------------------------------
    def _set_up_cache_and_scheduler(self, model_cls, model_path: str) -> int:
        """LoRA, pooler, KV cache (sized, checked, allocated on every rank), block manager and scheduler;
        returns the number of KV blocks."""
        config = self.config
        self.lora_manager = self._init_lora()
        pooling = self.runner_type == "pooling"
        self.pooler = (resolve_pooler(config.pooler_config, model_path,
                                      getattr(model_cls, "default_pooling_type", "LAST")) if pooling else None)
        if self.runner.needs_kv_cache:
            num_blocks = self._num_kv_blocks()
            self._check_fits(num_blocks)
            self.executor.allocate_kv_cache(num_blocks)
            one_rank = self.executor.world_size == 1  # decode graphs replay one process's kernels
            if self.device.type == "cuda" and not config.enforce_eager and not pooling and one_rank:
                self.runner.capture_decode_graphs(min(config.max_num_seqs, 512), self.max_model_len)
            if self.device.type == "cpu" and not config.enforce_eager and not pooling:
                self.runner.plan_cpu_decode()  # one rank, or each pipeline stage (the workers plan theirs)
            # pooling reads every prompt position's hidden state: no cached prefixes, no chunks
            self.block_manager = BlockManager(num_blocks, config.block_size,
                                              config.enable_prefix_caching and not pooling)
        else:
            num_blocks = 0
            self.block_manager = NoKVCache(config.block_size)
        chunked = config.enable_chunked_prefill and not pooling
        self.max_num_batched_tokens = budget = self._token_budget(chunked)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, budget, chunked)
        if self.lora_manager is not None:
            self.scheduler.max_loras = self.config.max_loras
        return num_blocks

    def _check_parallel(self, model_cls, gguf_file: str | None, w4a16=None) -> None:
        """What tensor and pipeline parallelism do not cover yet, refused before any worker starts."""
        pp = self.config.pipeline_parallel_size
        if pp > 1:
            self._check_pipeline(model_cls, gguf_file, w4a16)
        tp = self.config.tensor_parallel_size
        if tp == 1:
            return
        if gguf_file is not None:  # GGUF block matrices are not split into shards yet
            raise ValueError(f"tensor_parallel_size={tp}: a GGUF file runs quantized on one rank in this release; "
                             "use tensor_parallel_size=1, or dequantize_gguf=True (--dequantize-gguf) to shard it "
                             "dense")
        if w4a16 is not None:  # packed GPTQ/AWQ matrices are not split into shards yet
            raise ValueError(f"tensor_parallel_size={tp}: a {w4a16.method} checkpoint runs quantized on one rank in "
                             "this release; use tensor_parallel_size=1")
        check_tensor_parallel(self.hf_config, tp)
        if self.runner_type == "pooling":
            raise ValueError(f"tensor_parallel_size={tp}: pooling (embedding) models run with one rank in this "
                             "release; use tensor_parallel_size=1")
        if self.config.enable_lora:
            raise ValueError(f"tensor_parallel_size={tp} with enable_lora=True is not supported yet; use "
                             "tensor_parallel_size=1 for LoRA adapters")
        if model_cls.__name__.startswith("Transformers"):  # the transformers fallback cannot shard
            raise ValueError(f"tensor_parallel_size={tp} needs a native model (model_impl='native'); "
                             f"{type(self.hf_config).__name__} runs through transformers here")

    def _check_pipeline(self, model_cls, gguf_file: str | None, w4a16) -> None:
        pp = self.config.pipeline_parallel_size
        what = f"pipeline_parallel_size={pp}"
        if gguf_file is not None or w4a16 is not None:
            raise ValueError(f"{what}: a quantized checkpoint ({'GGUF' if gguf_file else w4a16.method}) runs on one "
                             "rank in this release; use pipeline_parallel_size=1"
                             + (", or dequantize_gguf=True (--dequantize-gguf) to split it dense" if gguf_file else ""))
        if self.runner_type == "pooling":
            raise ValueError(f"{what}: pooling (embedding) models run with one rank in this release; use "
                             "pipeline_parallel_size=1")
        if self.config.enable_lora:
            raise ValueError(f"{what} with enable_lora=True is not supported yet; use pipeline_parallel_size=1 for "
                             "LoRA adapters")
        if not getattr(model_cls, "supports_pp", False):
            raise ValueError(f"{what}: {model_cls.__name__} does not split into pipeline stages yet (supported: the "
                             "Llama family (Llama, Mistral, Qwen2/3, Phi-3, Mixtral, Baichuan) and the "
                             "parallel-residual families (GPT-NeoX, GPT-J, Phi, Falcon)); use "
                             "tensor_parallel_size instead")
        partition(num_layers_of(self.hf_config), pp)  # raises when a stage would get no layer

    def shutdown(self) -> None:
        """Stop the worker processes (tensor parallelism); the engine cannot step afterwards."""
        self.executor.shutdown()

    def _derive_max_model_len(self, model_cls, model_path: str) -> int:
        # ChatGLM configs call the context length `seq_length`, Baichuan-13B `model_max_length` (vLLM reads all)
        key = next((k for k in ("max_position_embeddings", "seq_length", "model_max_length")
                    if getattr(self.hf_config, k, None)),
                   "max_position_embeddings")
        limit = getattr(self.hf_config, key, None) or 2048
        if hasattr(model_cls, "position_limit"):  # RoBERTa: the first positions of the table are taken
            limit = model_cls.position_limit(self.hf_config)
        if self.config.max_model_len is None:
            st_length = sentence_transformers_max_length(model_path)
            return min(limit, st_length) if st_length else limit  # as sentence-transformers embeds
        if self.config.max_model_len > limit:
            raise ValueError(f"max_model_len={self.config.max_model_len} is larger than the model's "
                             f"{key}={limit}")
        return self.config.max_model_len

    def _token_budget(self, chunked: bool) -> int:
        """Tokens per step: 2048 with chunked prefill, else room for a whole prompt (pooling models
        run whole inputs: a larger default, where encoder matmuls run at full speed)."""
        given = self.config.max_num_batched_tokens
        if given is None:
            floor = POOLING_TOKEN_BUDGET if self.runner_type == "pooling" else 2048
            return 2048 if chunked else max(floor, self.max_model_len)
        if not chunked and given < self.max_model_len:
            why = ("a pooling model embeds a whole input in one step" if self.runner_type == "pooling"
                   else "with enable_chunked_prefill=False a whole prompt must fit in one step")
            raise ValueError(f"max_num_batched_tokens={given} is smaller than max_model_len={self.max_model_len}; "
                             f"{why}")
        return given

    def _num_kv_blocks(self) -> int:
        layers, kv_heads, head_dim = self.runner.kv_shape
        per_block = bytes_per_block(layers, self.config.block_size, kv_heads, head_dim, self.dtype,
                                    self.config.kv_cache_dtype)
        if self.config.num_gpu_blocks_override is not None:  # vLLM's knob: a fixed count, every rank the same
            return self.config.num_gpu_blocks_override
        if self.config.kv_cache_memory is not None:  # on GPU too, as vLLM's kv_cache_memory_bytes
            budget = self.config.kv_cache_memory
        elif self.device.type == "cuda":
            budget = self._profile_gpu_budget(per_block)
        else:
            budget = DEFAULT_CPU_KV_CACHE_BYTES
        blocks = max(int(budget // per_block), 0)
        if self.executor.world_size == 1:
            return blocks
        on_gpu = self.device.type == "cuda" and self.config.kv_cache_memory is None
        return self.executor.num_kv_blocks(blocks, per_block, None if on_gpu else budget,
                                           self.config.gpu_memory_utilization, self._activation_reserve())

    def _profile_gpu_budget(self, per_block: int) -> int:
        """Bytes for KV under the utilization cap, after weights and an activation reserve.

        The reserve is sized for one step of ``max_num_batched_tokens`` tokens (hidden states,
        MLP intermediates, logits of the sampled rows), a conservative stand-in for a profiling run.
        The cap counts everything on the device, as vLLM's does: other processes' memory too.
        """
        gc.collect()  # memory of engines this process dropped is not "in use"
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        reserve = self._activation_reserve()
        cap = total * self.config.gpu_memory_utilization
        budget = int(cap - (total - free) - reserve)
        if budget < per_block:
            raise ValueError(
                f"gpu_memory_utilization={self.config.gpu_memory_utilization} caps this engine at {cap / GiB:.2f} "
                f"of the device's {total / GiB:.2f} GiB, but {(total - free) / GiB:.2f} GiB are in use already "
                f"(this model's weights: {torch.cuda.memory_allocated() / GiB:.2f} GiB; the rest: other processes "
                f"or allocations) and one step needs ~{reserve / GiB:.2f} GiB of activations: no room is left for "
                "the KV cache; raise gpu_memory_utilization, or free the device")
        return budget

    def _activation_reserve(self) -> int:
        """Bytes one step of ``max_num_batched_tokens`` tokens may need for activations (GPU sizing)."""
        n = self.config.max_num_batched_tokens or 2048
        cfg = self.hf_config
        width = cfg.hidden_size * 8 + getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) * 3
        return n * width * self.dtype.itemsize + self.config.max_num_seqs * cfg.vocab_size * 4 * 3

    def _check_fits(self, num_blocks: int) -> None:
        bs = self.config.block_size
        capacity = num_blocks * bs
        if capacity >= self.max_model_len:
            return
        if self.config.max_model_len is not None:
            layers, kv_heads, head_dim = self.runner.kv_shape
            need = bytes_per_block(layers, bs, kv_heads, head_dim, self.dtype,
                                   self.config.kv_cache_dtype) * -(-self.max_model_len // bs)
            knob = ("gpu_memory_utilization" if self.device.type == "cuda" and self.config.kv_cache_memory is None
                    else "kv_cache_memory")
            raise ValueError(
                f"max_model_len={self.max_model_len} needs {need / GiB:.2f} GiB of KV cache for one sequence, but "
                f"only {num_blocks} blocks ({capacity} tokens) fit; raise {knob} or lower max_model_len")
        if capacity < bs:
            raise ValueError(f"the KV cache has room for no block ({num_blocks} blocks); raise kv_cache_memory")
        logger.warning("max_model_len capped from %d to %d to fit the KV cache", self.max_model_len, capacity)
        self.max_model_len = capacity

    def _init_lora(self):
        """With ``enable_lora``: the adapter manager, its LoRA methods wrapped around the model's projections."""
        if not self.config.enable_lora:
            return None
        from pagedllm.lora.manager import LoRAManager

        c = self.config
        manager = LoRAManager(self.runner.model, c.max_loras, c.max_lora_rank, c.max_cpu_loras, self.dtype,
                              self.device)
        self.runner.lora_manager = manager
        return manager

    def load_lora(self, lora_request) -> None:
        """Read and check an adapter now (thread-safe); the async engine calls it on the caller's thread."""
        if self.lora_manager is None:
            raise ValueError(f"lora_request={getattr(lora_request, 'lora_name', lora_request)!r} needs an engine "
                             "built with enable_lora=True (--enable-lora)")
        self.lora_manager.load(lora_request)

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = set()
        for source in (self.hf_config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        try:
            gen = GenerationConfig.from_pretrained(self.model_path)
            value = gen.eos_token_id
            ids.update(value if isinstance(value, (list, tuple)) else [value] if value is not None else [])
        except (OSError, ValueError):
            pass
        return tuple(sorted(ids))

    # ---- requests ------------------------------------------------------------------
    def tokenize_prompt(self, prompt) -> tuple[str | None, list[int]]:
        """A str, a list of token ids, or {'prompt': ...} / {'prompt_token_ids': ...}."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                prompt = list(prompt["prompt_token_ids"])
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs a 'prompt' or 'prompt_token_ids' key")
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return None, list(prompt)
        raise TypeError(f"prompt must be a str, a list of token ids or a dict, got {type(prompt).__name__}")

    def add_request(self, request_id: str | None, prompt, params: SamplingParams | None = None,
                    arrival_time: float | None = None, *, strict_max_tokens: bool = False,
                    lora_request=None) -> str:
        """Queue one request. ``strict_max_tokens`` (``LLM``, the server): prompt + ``max_tokens`` over
        ``max_model_len`` is an error (``fit_context``); otherwise ``max_tokens`` is capped to the room left.
        ``lora_request``: the adapter it runs under (loaded and checked here unless loaded already)."""
        if isinstance(params, PoolingParams):
            if lora_request is not None:
                raise ValueError("lora_request: LoRA adapters apply to generation, not to pooling requests")
            return self._add_pooling_request(request_id, prompt, params, arrival_time)
        if self.runner_type == "pooling":
            raise ValueError(f"model {self.config.model!r} runs as runner='pooling' (an embedding model): it makes "
                             "embeddings (LLM.embed / LLM.encode, /v1/embeddings), not text; generate with a model "
                             "that has a language-model head")
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        text, token_ids = self.tokenize_prompt(prompt)
        if not token_ids:
            raise ValueError("prompt must not be empty (the decoder prompt has no tokens)")
        if params.truncate_prompt_tokens is not None and len(token_ids) > params.truncate_prompt_tokens:
            token_ids = token_ids[-params.truncate_prompt_tokens:]  # keep the end (vLLM: left truncation)
        self._check_params(params)
        if lora_request is not None:
            self.load_lora(lora_request)
        params = copy.copy(params)  # later changes to the caller's object do not reach the request
        self._check_vocabulary(token_ids)
        max_tokens = fit_context(len(token_ids), params.max_tokens, self.max_model_len, strict=strict_max_tokens)
        request_id = self._new_request_id(request_id)
        seq = Sequence(request_id, text, token_ids, params, max_tokens, arrival_time)
        seq.eos_token_ids = self.eos_token_ids
        seq.lora_request = lora_request
        if params.bad_words:
            seq.bad_words_token_ids = self._bad_words_token_ids(params.bad_words)
        self._init_seq(seq)
        if params.num_samples > 1:
            seq.group = SequenceGroup(seq)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _add_pooling_request(self, request_id: str | None, prompt, params: PoolingParams,
                             arrival_time: float | None) -> str:
        """Queue one input to embed: checked whole (length, vocabulary, dimensions) before it is queued."""
        if self.runner_type != "pooling":
            raise ValueError(f"model {self.config.model!r} runs as runner='generate': embeddings need an engine "
                             "started with runner='pooling' (LLM(model, runner='pooling'), serve --runner pooling)")
        text, token_ids = self._pooling_tokens(prompt, params.truncate_prompt_tokens)
        self._check_vocabulary(token_ids)
        if len(token_ids) > self.max_model_len:
            raise ContextWindowError(
                f"This model's maximum context length is {self.max_model_len} tokens (max_model_len). However, your "
                f"input has {len(token_ids)} tokens. Shorten it, or pass truncate_prompt_tokens to cut it.",
                param="prompt")
        self._check_dimensions(params.dimensions)
        request_id = self._new_request_id(request_id)
        seq = Sequence(request_id, text, token_ids, copy.copy(params), 0, arrival_time)
        self.sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _check_vocabulary(self, token_ids: list[int]) -> None:
        vocab = self.hf_config.vocab_size
        bad = [t for t in token_ids if t < 0 or t >= vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is out of vocabulary (0..{vocab - 1})")

    def _new_request_id(self, request_id: str | None) -> str:
        """The caller's id (which must be free), or the next counter value."""
        request_id = str(next(self._counter)) if request_id is None else str(request_id)
        if request_id in self.sequences:
            raise ValueError(f"request_id {request_id!r} is already in use")
        return request_id

    def _pooling_tokens(self, prompt, truncate: int | None) -> tuple[str | None, list[int]]:
        """An input's token ids, cut to ``truncate`` tokens on the tokenizer's truncation side (a text is
        cut by the tokenizer, keeping its special tokens, as sentence-transformers does; -1: max_model_len)."""
        limit = self.max_model_len if truncate == -1 else truncate
        if isinstance(prompt, str) and not prompt:
            raise ValueError("prompt must not be an empty string")
        if isinstance(prompt, str) and limit is not None:
            return prompt, self.tokenizer(prompt, truncation=True, max_length=limit)["input_ids"]
        text, token_ids = self.tokenize_prompt(prompt)
        if not token_ids:
            raise ValueError("prompt must not be empty (it has no tokens)")
        if limit is not None and len(token_ids) > limit:
            left = getattr(self.tokenizer, "truncation_side", "right") == "left"
            token_ids = token_ids[-limit:] if left else token_ids[:limit]
        return text, token_ids

    def _check_dimensions(self, dimensions: int | None) -> None:
        """Matryoshka truncation only where the model was trained for it (vLLM's rule)."""
        if dimensions is None:
            return
        cfg = self.hf_config
        allowed = getattr(cfg, "matryoshka_dimensions", None)
        if not (getattr(cfg, "is_matryoshka", False) or allowed):
            raise ValueError(f"dimensions={dimensions}: model {self.config.model!r} does not support Matryoshka "
                             "representation; changing its output dimensions would give poor embeddings (leave "
                             "dimensions unset)")
        if allowed and dimensions not in allowed:
            raise ValueError(f"dimensions={dimensions}: model {self.config.model!r} supports dimensions {allowed}")
        if dimensions > cfg.hidden_size:
            raise ValueError(f"dimensions={dimensions} exceeds the model's embedding size {cfg.hidden_size}")

    def abort_request(self, request_id: str | list[str]) -> None:
        """Stop requests now and free their blocks; unknown or finished ids are ignored."""
        for rid in [request_id] if isinstance(request_id, str) else request_id:
            seq = self.sequences.pop(rid, None)
            if seq is None or (seq.is_finished and seq.group is None):
                continue
            for member in (seq.group.seqs if seq.group is not None else [seq]):
                if not member.is_finished:
                    member.finish_reason = "abort"
                    self._finish(member)
            self.stats.aborted_requests += 1

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def get_num_unfinished_requests(self) -> int:
        return self.scheduler.num_unfinished

    # ---- the step ------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        scheduled = self.scheduler.schedule()
        if not scheduled:
            if self.scheduler.has_unfinished():
                raise RuntimeError("scheduler made no progress with requests pending (KV cache too small?)")
            return []
        now = time.time()
        for s in scheduled:
            if s.seq.metrics.first_scheduled_time is None:
                s.seq.metrics.first_scheduled_time = now
        if self.runner_type == "pooling":
            return self._pooling_step(scheduled)
        out = self.executor.execute_model(scheduled)
        stats = self.stats
        stats.num_steps += 1
        stats.max_batch_size = max(stats.max_batch_size, len(scheduled))
        for s in scheduled:
            is_generated_input = s.num_new_tokens == 1 and s.samples and s.seq.num_output_tokens > 0
            if not is_generated_input:
                stats.prompt_tokens += s.num_new_tokens
            s.seq.num_computed_tokens += s.num_new_tokens
        proc = self.output_processor
        if out.prompt_logprobs:
            proc.add_prompt_logprobs(scheduled, out.prompt_logprobs)
        now = time.time()
        advanced: dict[int, Sequence] = {}  # sequences that got a token this step
        logprobs, top_logprobs = out.logprobs, out.top_logprobs
        for j, (i, token) in enumerate(zip(out.seq_indices, out.token_ids)):
            seq = scheduled[i].seq
            seq.token_ids.append(token)
            if logprobs is not None:
                seq.cumulative_logprob += logprobs[j]
            stats.generation_tokens += 1
            if seq.metrics.first_token_time is None:
                seq.metrics.first_token_time = now
            seq.metrics.last_token_time = now
            if seq.logprobs is not None:
                seq.logprobs.append(top_logprobs[j])
            if seq.matcher is not None:
                seq.matcher.consume_token(token)
            group = seq.group
            if group is not None and not group.forked:
                group.fork(self.block_manager, self.scheduler, self._init_seq)
            proc.process_token(seq, token)
            if seq.finish_reason is not None:
                self._finish(seq)
                seq.metrics.finished_time = now
                if group is None or group.is_finished:
                    self.sequences.pop(seq.request_id, None)
                    stats.finished_requests += 1
            advanced[id(seq)] = seq
        outputs = proc.make_outputs(advanced)
        if self.stat_logger is not None:
            self.stat_logger.maybe_log(self)
        return outputs

    def _pooling_step(self, scheduled) -> list[PoolingRequestOutput]:
        """Every scheduled input is whole: pool it, free it, report it."""
        vectors = self.executor.execute_pooling(scheduled, self.pooler)
        stats, now = self.stats, time.time()
        stats.num_steps += 1
        stats.max_batch_size = max(stats.max_batch_size, len(scheduled))
        outputs = []
        for s, vector in zip(scheduled, vectors):
            seq = s.seq
            seq.num_computed_tokens += s.num_new_tokens
            stats.prompt_tokens += s.num_new_tokens
            seq.finish_reason = "stop"
            seq.metrics.first_token_time = seq.metrics.last_token_time = seq.metrics.finished_time = now
            self._finish(seq)
            self.sequences.pop(seq.request_id, None)
            stats.finished_requests += 1
            outputs.append(PoolingRequestOutput(seq.request_id, PoolingOutput(vector), seq.token_ids, True,
                                                seq.prompt))
        if self.stat_logger is not None:
            self.stat_logger.maybe_log(self)
        return outputs

    def _finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's blocks and its runner-side generator."""
        self.scheduler.finish(seq)
        self.executor.release(((seq.request_id, seq.index),))

    # ---- request set-up and stop rules ----------------------------------------------
    def _check_params(self, params: SamplingParams) -> None:
        """Check the vocabulary-dependent fields (the user's params are never written to)."""
        if params.use_beam_search:
            raise ValueError("use_beam_search=True runs through LLM.beam_search / LLM.generate, "
                             "not a single engine request")
        vocab = self.hf_config.vocab_size
        for name, ids in (("logit_bias", list(params.logit_bias or ())),
                          ("allowed_token_ids", params.allowed_token_ids or ()),
                          ("stop_token_ids", params.stop_token_ids)):
            bad = [t for t in ids if t >= vocab]
            if bad:
                raise ValueError(f"{name} has token id {bad[0]} outside the vocabulary (0..{vocab - 1})")
        # a bad grammar fails in _init_seq, before the request is registered

    def _bad_words_token_ids(self, bad_words: list[str]) -> list[list[int]]:
        """Each word's token ids, with and without a leading space (vLLM's bad_words)."""
        words = set()
        for word in bad_words:
            for prefix in ("", " "):
                ids = self.tokenizer.encode(prefix + word.lstrip(), add_special_tokens=False)
                if ids:
                    words.add(tuple(ids))
        return [list(w) for w in sorted(words)]

    def _structured_compiler(self):
        compiler = getattr(self, "_so_compiler", None)
        if compiler is None:
            from pagedllm.worker.structured_output import StructuredOutputCompiler

            compiler = self._so_compiler = StructuredOutputCompiler(
                self.tokenizer, self.hf_config.vocab_size, self.eos_token_ids)
        return compiler

    def _init_seq(self, seq: Sequence) -> None:
        """Per-sequence state: incremental detokenizer, grammar state (seeded generators live in
        the runner)."""
        params = seq.params
        if params.detokenize and (params.output_kind is not RequestOutputKind.FINAL_ONLY or params.stop):
            seq.detok = IncrementalDetokenizer(self.tokenizer, seq.token_ids[:seq.num_prompt_tokens],
                                               params.skip_special_tokens)
        if params.structured_outputs is not None:
            seq.matcher = self._structured_compiler().matcher(params.structured_outputs)

    # ---- introspection ---------------------------------------------------------------
    def get_tokenizer(self):
        return self.tokenizer

    @property
    def kv_cache_usage(self) -> float:
        return self.block_manager.usage

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions


def checkpoint_dtype(hf_config) -> torch.dtype | None:
    """The checkpoint's dtype from its config: ``dtype`` (transformers >= 4.56), else ``torch_dtype`` (older).

    Read from the instance's own attributes: the ``torch_dtype`` property of newer transformers logs
    "`torch_dtype` is deprecated!" on every start.
    """
    attrs = vars(hf_config)
    value = attrs.get("dtype", attrs.get("torch_dtype"))
    return value if isinstance(value, torch.dtype) else None
