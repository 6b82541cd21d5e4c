"""Builds one flat batch per step, runs the model over the paged cache and samples.

Token layout (what the attention backends expect): single-token sequences first (decodes,
and 1-token prefill remainders, which are the same computation), then multi-token prefill
chunks back to back. Slot mapping and positions are computed with tensor ops, not per token.

Sequences are only read here: a step returns a ``SamplerOutput`` (plain data) and the engine
applies it. Seeded requests' generators live here, keyed by (request id, sample index), as the
worker would keep them in its own process; the engine releases them when a sequence ends.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pagedllm import distributed
from pagedllm.attention import AttentionMetadata, get_attention_backend
from pagedllm.engine.scheduler import ScheduledSeq
from pagedllm.forward_context import set_forward_context
from pagedllm.loader import iterate_weights
from pagedllm.models.registry import resolve_model_class
from pagedllm.quantization.gguf_model import load_gguf_weights
from pagedllm.quantization.fp8_model import load_fp8_weights
from pagedllm.quantization.w4a16_model import load_w4a16_weights
from pagedllm.models.layers.attention import Attention
from pagedllm.models.layers.custom_op import CustomOp
from pagedllm.models.layers.encoder_attention import EncoderMetadata
from pagedllm.pooling.config import PoolerConfig
from pagedllm.pooling.pooler import finish, pool
from pagedllm.models.layers.rotary_embedding import RotaryEmbedding
from pagedllm.worker.cache_engine import allocate_kv_cache
from pagedllm.worker.cpu_malloc import keep_freed_memory
from pagedllm.models.llama_cpu_decode import LlamaCpuDecode
from pagedllm.worker.cuda_graphs import DecodeGraphs
from pagedllm.worker.pipeline_stage import MicroBatch, receive_logits, run_stage, split_microbatches
from pagedllm.worker.sampler import Sampler, SamplingBatch, compute_prompt_logprobs
from pagedllm.worker.sampler_output import SamplerOutput

logger = logging.getLogger(__name__)
MICROBATCHES_ENV = "PAGEDLLM_PP_MICROBATCHES"  # a fixed number of micro-batches per pipelined step
MIN_MICROBATCH_TOKENS = 64


def default_microbatches(num_tokens: int, stages: int) -> int:
    """One micro-batch per stage when each gets at least ``MIN_MICROBATCH_TOKENS`` tokens, fewer otherwise.

    A micro-batch reads its stage's weights once: a small decode batch costs about as much as a larger one
    (on CPU, measured with the bundled model: a 32-sequence decode step split in two took 2.5x the first
    stage's compute time of the unsplit step), so splitting it gains overlap but pays the weights twice.
    Steps with more tokens (prefills, wide decode batches) are bound by compute, where the overlap wins.
    """
    return max(1, min(stages, num_tokens // MIN_MICROBATCH_TOKENS))


def _positive_env(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer (micro-batches per pipelined step)")
    return int(value)


ENCODER_ROW_BUCKET = 64  # an encoder step's rows are padded to a multiple of this (_forward_encoder)
ENCODER_SMALL_ROWS, ENCODER_SMALL_BUCKET = 256, 16  # ... or, up to 256 rows, of 16: a one-text step pads little


class ModelRunner:
    lora_manager = None  # a pagedllm.lora.manager.LoRAManager when the engine serves adapters
    # the other tensor-parallel ranks (``MultiprocExecutor``) when this is rank 0 of several: told each
    # step's batch before the forward and the rows before each LM-head call, so every rank joins the
    # same collectives; None with one rank
    peers = None
    # pipeline stages (``pipeline_stage``): a step's batch runs as this many micro-batches (at most one per
    # sequence); None: one on CPU, else ``default_microbatches``. PAGEDLLM_PP_MICROBATCHES sets a fixed count
    # (1: the stages run one after another, no overlap, each stage reading its weights once per step; more on
    # CPU: the stages overlap on the cores they share)
    microbatches: int | None = None

    def __init__(self, hf_config, model_path: str, dtype: torch.dtype, device: torch.device,
                 max_model_len: int, block_size: int, attention_backend: str | None = None,
                 model_impl: str = "auto", model_cls: type[nn.Module] | None = None, gguf_file: str | None = None,
                 w4a16=None, fp8=None, kv_cache_dtype: str = "auto"):
        self.dtype = dtype
        self.kv_cache_dtype = kv_cache_dtype
        self.device = device
        if device.type == "cpu":
            keep_freed_memory()  # activations reuse the heap instead of page-faulting every step
        self.block_size = block_size
        self.vocab_size = hf_config.vocab_size
        self.hidden_size = hf_config.hidden_size
        self.pp_size = distributed.get_pp_world_size()
        if self.pp_size > 1:
            self.microbatches = _positive_env(MICROBATCHES_ENV)
        model_cls = model_cls or resolve_model_class(hf_config, model_impl)  # the engine has resolved it already
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                # the longest position this engine will use (longrope picks its factors by it, as vLLM)
                self.model: nn.Module = model_cls(hf_config, max_position=max_model_len)
        finally:
            torch.set_default_dtype(previous)
        if gguf_file is not None:  # a GGUF file run quantized: its blocks load into GGUF linear methods
            load_gguf_weights(self.model, gguf_file, model_path, hf_config, dtype)
        elif w4a16 is not None:  # a GPTQ/AWQ checkpoint: its quantized layers keep their weights packed
            load_w4a16_weights(self.model, model_path, w4a16)
        elif fp8 is not None:  # fp8 weights: a dense checkpoint quantized layer by layer as it loads, or stored
            load_fp8_weights(self.model, model_path, fp8)
        else:
            self.model.load_weights(iterate_weights(model_path))
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, RotaryEmbedding):
                module.to_dtype(dtype)
            if hasattr(module, "prepack_for_cpu"):  # CPU bf16: oneDNN-packed linear, LM head, small MoE
                module.prepack_for_cpu()
            if isinstance(module, CustomOp):  # norms, activations, rotary: C, Triton or torch, chosen once
                module.bind_forward(device, dtype)
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.backend_cls = get_attention_backend(attention_backend, device)
        for layer in self.attention_layers:
            layer.impl = self.backend_cls(layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.scale,
                                          layer.sliding_window, layer.logits_soft_cap,
                                          alibi_slopes=layer.alibi_slopes)
        self.sampler = Sampler()
        self.graphs: DecodeGraphs | None = None
        self.cpu_decode: LlamaCpuDecode | None = None
        self.generators: dict[tuple[str, int], torch.Generator] = {}

    @property
    def needs_kv_cache(self) -> bool:
        """False for encoders: they attend within one step and keep nothing."""
        return bool(self.attention_layers)

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        layer = self.attention_layers[0]
        return len(self.attention_layers), layer.num_kv_heads, layer.head_dim

    def allocate_kv_cache(self, num_blocks: int) -> None:
        allocate_kv_cache(self.attention_layers, num_blocks, self.block_size, self.dtype, self.device,
                          self.kv_cache_dtype)

    def capture_decode_graphs(self, max_batch: int, max_model_len: int, emulate: bool = False) -> None:
        """CUDA graphs for decode steps of up to ``max_batch`` sequences (see ``cuda_graphs``).

        Only the triton backend plans a step from device tensors alone (the CPU backends read
        host copies of the lengths), so only it is captured; a model whose forward cannot be
        captured (e.g. MoE routing that reads counts on the host) runs eagerly, with a warning.
        """
        if self.backend_cls.name != "triton":
            return
        graphs = DecodeGraphs(self.model, self.device, max_batch, max_model_len, self.block_size, emulate)
        try:
            graphs.capture(self.backend_cls.prepare)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            logger.warning("CUDA graph capture failed (%s: %s); decode steps run eagerly",
                           type(exc).__name__, exc)
            return
        self.graphs = graphs
        logger.info("captured CUDA graphs for decode batches %s", graphs.buckets)

    def plan_cpu_decode(self) -> None:
        """Decode-only steps as a flat run of kernel calls where the model is the plain Llama block on CPU
        kernels (``models/llama_cpu_decode.py``): the CPU's counterpart of the decode graphs."""
        if self.device.type == "cpu" and self.lora_manager is None:  # a TP rank: its shards; a stage: its layers
            self.cpu_decode = LlamaCpuDecode.build(self.model)

    # ---- seeded generators ------------------------------------------------------------
    def _generator(self, seq) -> torch.Generator:
        """The sequence's own generator, seeded at its first draw (it survives preemption)."""
        key = (seq.request_id, seq.index)
        gen = self.generators.get(key)
        if gen is None:
            gen = self.generators[key] = torch.Generator(device=self.device).manual_seed(seq.params.seed)
        return gen

    def release(self, keys) -> None:
        """Forget the generators of sequences that ended: (request id, sample index) pairs."""
        for key in keys:
            self.generators.pop(key, None)

    # ---- one step ------------------------------------------------------------------
    def _build_metadata(self, ordered: list[ScheduledSeq], nd: int):
        bs = self.block_size
        dev = self.device
        input_ids: list[int] = []
        starts, q_lens, tables = [], [], []
        for s in ordered:
            nc, n = s.seq.num_computed_tokens, s.num_new_tokens
            input_ids.extend(s.seq.token_ids[nc:nc + n])
            starts.append(nc)
            q_lens.append(n)
            tables.append(s.seq.block_table)
        max_blocks = max(len(t) for t in tables)
        table = torch.tensor([t + [0] * (max_blocks - len(t)) for t in tables], dtype=torch.int32)
        q_lens_t = torch.tensor(q_lens)
        starts_t = torch.tensor(starts)
        seq_idx = torch.repeat_interleave(torch.arange(len(ordered)), q_lens_t)
        first_tok = torch.cumsum(q_lens_t, 0) - q_lens_t
        positions = torch.arange(len(input_ids)) - first_tok[seq_idx] + starts_t[seq_idx]
        slots = table[seq_idx, positions // bs].long() * bs + positions % bs
        ctx_lens = starts_t + q_lens_t
        p_qlens = q_lens[nd:]
        md = AttentionMetadata(
            slot_mapping=slots.to(dev),
            block_size=bs,
            num_decode_tokens=nd,
            decode_block_tables=table[:nd].to(dev),
            decode_context_lens=ctx_lens[:nd].to(torch.int32).to(dev),
            max_decode_context_len=int(ctx_lens[:nd].max()) if nd else 0,
            num_prefills=len(ordered) - nd,
            prefill_query_start_loc=torch.tensor([0] + list(_cumsum(p_qlens)), dtype=torch.int32).to(dev),
            prefill_block_tables=table[nd:].to(dev),
            prefill_context_lens=ctx_lens[nd:].to(torch.int32).to(dev),
            max_prefill_query_len=max(p_qlens, default=0),
            max_prefill_context_len=int(ctx_lens[nd:].max()) if nd < len(ordered) else 0,
            decode_context_lens_list=ctx_lens[:nd].tolist(),
            prefill_query_lens_list=p_qlens,
            prefill_context_lens_list=ctx_lens[nd:].tolist(),
        )
        self.backend_cls.prepare(md)
        last_token_index = first_tok + q_lens_t - 1
        return torch.tensor(input_ids, device=dev), positions.to(dev), md, last_token_index

    def _forward_paged(self, scheduled: list[ScheduledSeq]):
        """The model over the paged cache: ``(order, ordered, hidden, last_idx)``, where ``ordered`` are
        the scheduled sequences in the backends' layout (decodes first) and ``order`` their indices."""
        order = [i for i, s in enumerate(scheduled) if s.num_new_tokens == 1]  # decodes first
        nd = len(order)
        if nd < len(scheduled):
            order += [i for i, s in enumerate(scheduled) if s.num_new_tokens > 1]
        lora = None
        if self.lora_manager is not None:  # each adapter's tokens contiguous (decodes, then prefills)
            order, lora = self.lora_manager.order_step(scheduled, order, nd)
        ordered = [scheduled[i] for i in order]
        input_ids, positions, md, last_idx = self._build_metadata(ordered, nd)
        if (self.graphs is not None and lora is None and nd == len(ordered)
                and self.graphs.bucket_for(nd) is not None):
            hidden = self.graphs.run(md, input_ids, positions)
        else:
            if self.peers is not None:  # the other TP ranks run the same forward (``Worker.forward``)
                self.peers.broadcast_forward(input_ids, positions, md)
            if lora is None:
                hidden = self.forward(input_ids, positions, md)
            else:
                with set_forward_context(md, lora):
                    hidden = self.model(input_ids, positions)
        return order, ordered, hidden, last_idx

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, md, intermediate=None):
        """The model over a step whose metadata is prepared: a decode-only step through the flat CPU plan where
        there is one, else the modules. Every rank (TP shard or pipeline stage) chooses alike from the step's
        metadata; ``intermediate``: what the previous pipeline stage sent."""
        with set_forward_context(md):  # also what a linear method's apply reads in the flat plan
            if self.cpu_decode is not None and md.num_prefills == 0:
                return self.cpu_decode.run(input_ids, positions, md, intermediate)
            if intermediate is None:
                return self.model(input_ids, positions)
            return self.model(input_ids, positions, intermediate)

    def _logits(self, hidden: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The LM head over ``hidden[rows]`` (or all of ``hidden``); the other ranks run it on the same rows."""
        if self.peers is not None:
            self.peers.broadcast_logits(hidden if rows is None else rows)
        return self.model.compute_logits(hidden if rows is None else hidden[rows.to(self.device)])

    def _forward_pipeline(self, scheduled: list[ScheduledSeq]):
        """The pipeline stages over the step in micro-batches (``pipeline_stage``), this process being
        the first stage: ``(order, ordered, rows, last_idx, logits_of)`` where ``rows`` stands for the
        step's hidden states (global row numbers) and ``logits_of(rows)`` gives their logits, received
        from the last stage (only the rows asked for: sampled and prompt-logprob positions)."""
        order = [i for i, s in enumerate(scheduled) if s.num_new_tokens == 1]  # decodes first
        order += [i for i, s in enumerate(scheduled) if s.num_new_tokens > 1]
        ordered = [scheduled[i] for i in order]
        microbatches, last_parts, wanted_parts, offset = [], [], [], 0
        tokens = [s.num_new_tokens for s in ordered]
        # on CPU the stages share the machine's cores (``mp_executor.threads_per_rank``): one micro-batch, the
        # stages one after another, each with every core (overlapping micro-batches would put two stages' threads
        # on the same cores)
        count = self.microbatches or (1 if self.device.type == "cpu" else default_microbatches(sum(tokens), self.pp_size))
        for part in split_microbatches(tokens, count):
            chunk = ordered[part.start:part.stop]
            nd = sum(1 for s in chunk if s.num_new_tokens == 1)
            input_ids, positions, md, last_idx = self._build_metadata(chunk, nd)
            wanted = [int(last_idx[j]) for j, s in enumerate(chunk) if s.samples]
            for j, s in enumerate(chunk):  # every position whose logits give a prompt logprob
                if s.seq.params.prompt_logprobs is not None:
                    wanted.extend(range(int(last_idx[j]) - s.num_new_tokens + 1, int(last_idx[j]) + 1))
            rows = torch.tensor(sorted(set(wanted)), dtype=torch.long)
            microbatches.append(MicroBatch(input_ids, positions, md, rows))
            last_parts.append(last_idx + offset)
            wanted_parts.append(rows + offset)
            offset += len(input_ids)
        if self.peers is not None:
            self.peers.broadcast_pipeline(microbatches)
        run_stage(self, microbatches)
        received = receive_logits(microbatches, self.vocab_size, self.dtype, self.device)
        logits = received[0] if len(received) == 1 else torch.cat(received)
        where = torch.full((offset,), -1, dtype=torch.long)
        wanted = torch.cat(wanted_parts)
        where[wanted] = torch.arange(len(wanted))
        return (order, ordered, torch.arange(offset), torch.cat(last_parts),
                lambda rows: logits[where[rows.cpu()].to(self.device)])

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSeq]) -> SamplerOutput:
        """Run one step and sample; reads the sequences, writes none of them."""
        if self.pp_size > 1:
            order, ordered, hidden, last_idx, logits_of = self._forward_pipeline(scheduled)
        else:
            (order, ordered, hidden, last_idx), logits_of = self._forward_paged(scheduled), None
        prompt_logprobs = None
        if any(s.seq.params.prompt_logprobs is not None for s in ordered):
            prompt_logprobs = compute_prompt_logprobs(logits_of or self._logits, hidden, ordered, order, last_idx)
        rows = [i for i, s in enumerate(ordered) if s.samples]
        if not rows:
            return SamplerOutput.empty(prompt_logprobs)
        seqs = [ordered[i].seq for i in rows]
        logits = (logits_of(last_idx[rows]) if logits_of else self._logits(hidden, last_idx[rows])).float()
        generators = [None if s.params.seed is None else self._generator(s) for s in seqs]
        batch = SamplingBatch.build([s.params for s in seqs], generators, self.vocab_size, self.device, seqs=seqs)
        token_ids, logprobs, top_logprobs = self.sampler(logits, batch)
        return SamplerOutput([order[i] for i in rows], token_ids, logprobs, top_logprobs, prompt_logprobs)


    @torch.inference_mode()
    def execute_pooling(self, scheduled: list[ScheduledSeq], pooler: PoolerConfig) -> list[torch.Tensor]:
        """One step of whole inputs -> each sequence's finished vector, in ``scheduled`` order.

        An encoder packs the inputs back to back with no cache (``EncoderAttention``); a decoder used as
        an embedder runs the paged path like a prefill (its blocks are freed when the request ends).
        """
        if self.needs_kv_cache:
            order, ordered, hidden, _ = self._forward_paged(scheduled)
        else:
            order, ordered = range(len(scheduled)), scheduled
            hidden = self._forward_encoder(scheduled)
        vectors = pool(hidden, [s.num_new_tokens for s in ordered], pooler.pooling_type)
        finished = finish(vectors, [s.seq.params for s in ordered], pooler.normalize)
        out: list[torch.Tensor] = [None] * len(scheduled)
        for i, vector in zip(order, finished):
            out[i] = vector
        return out

    def _forward_encoder(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """The step's inputs packed back to back, padded to a multiple of ``ENCODER_ROW_BUCKET`` rows (16 up to 256
        rows) by rows that are dropped (positions from 0; attention leaves them zero): oneDNN builds a kernel for
        each new row count, and with every step's count new that build was a fifth of a first pass over 1,000
        texts."""
        seq_lens = [s.num_new_tokens for s in scheduled]
        ids = [t for s in scheduled for t in s.seq.token_ids[:s.num_new_tokens]]
        rows = len(ids)
        pad = -rows % (ENCODER_SMALL_BUCKET if rows <= ENCODER_SMALL_ROWS else ENCODER_ROW_BUCKET)
        if pad:
            ids += [0] * pad
        lens = torch.tensor(seq_lens + [pad])
        starts = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        positions = torch.arange(len(ids)) - starts
        with set_forward_context(EncoderMetadata(seq_lens)):
            return self.model(torch.tensor(ids, device=self.device), positions.to(self.device))[:rows]


def _cumsum(values):
    total = 0
    for v in values:
        total += v
        yield total
