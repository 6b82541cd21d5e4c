"""The offline API: ``LLM(model=...).generate(...)`` and ``.chat(...)``, as in vLLM."""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence as Seq

from tqdm.auto import tqdm

from pagedllm.config import EngineConfig
from pagedllm.engine.llm_engine import LLMEngine
from pagedllm.engine.beam_search import BeamSearchOutput, beam_search
from pagedllm.outputs import CompletionOutput, EmbeddingRequestOutput, PoolingRequestOutput, RequestOutput
from pagedllm.pooling.params import PoolingParams
from pagedllm.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams
from pagedllm.tokenizer import render_chat


class LLM:
    """Load a model once, then generate for batches of prompts with continuous batching.

    ``LLM(model, **engine_args)``: engine args use vLLM's names (``dtype``, ``max_model_len``,
    ``kv_cache_memory``, ``enable_prefix_caching``, ...); an unknown name is a TypeError.
    """

    def __init__(self, model: str, **kwargs):
        self.llm_engine = LLMEngine(EngineConfig.from_kwargs(model=model, **kwargs))
        self._request_counter = 0

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """What a call without sampling params uses: the model's generation_config defaults (vLLM's)."""
        return SamplingParams(**self.llm_engine.default_sampling_params)

    def generate(self, prompts=None, sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 *, use_tqdm: bool = True, prompt_token_ids: list[list[int]] | None = None,
                 lora_request=None, **kwargs) -> list[RequestOutput]:
        """Generate for one prompt or a list (strings, token-id lists, prompt dicts, or a mix).

        Short form: ``llm.generate("prompt", max_tokens=50, temperature=0.7)`` builds the
        SamplingParams from keyword arguments. ``lora_request``: a ``LoRARequest`` for every prompt, or
        one per prompt (None entries: the base model); needs ``LLM(..., enable_lora=True)``.
        """
        if prompts is None and prompt_token_ids is not None:
            prompts = [list(p) for p in prompt_token_ids]
        prompts = _as_prompt_list(prompts)
        params = _params_list(_short_form(sampling_params, kwargs, self.llm_engine.default_sampling_params),
                              len(prompts), self.get_default_sampling_params())
        loras = _lora_list(lora_request, len(prompts))
        if any(p.use_beam_search for p in params):
            if any(loras):
                raise ValueError("lora_request with use_beam_search=True is not supported; use greedy or sampling")
            return self._generate_beam(prompts, params, use_tqdm)
        return self._run(prompts, params, use_tqdm, loras)

    def beam_search(self, prompts, params: BeamSearchParams) -> list[BeamSearchOutput]:
        """Beam search (vLLM's ``LLM.beam_search``): one BeamSearchOutput per prompt, best first."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        return beam_search(self, _as_prompt_list(prompts), params, self.llm_engine.eos_token_ids)

    def _generate_beam(self, prompts: list, params: list[SamplingParams], use_tqdm: bool) -> list[RequestOutput]:
        """``SamplingParams(use_beam_search=True)``: width ``best_of`` (or ``n``), the ``n`` best returned."""
        outputs = []
        for prompt, p in zip(prompts, params):
            if not p.use_beam_search:
                outputs.extend(self._run([prompt], [p], use_tqdm))
                continue
            bp = BeamSearchParams(beam_width=p.num_samples, max_tokens=p.max_tokens or 16, ignore_eos=p.ignore_eos,
                                  length_penalty=p.length_penalty, early_stopping=p.early_stopping)
            text, prompt_ids = self.llm_engine.tokenize_prompt(prompt)
            result = self.beam_search([prompt_ids], bp)[0]
            completions = [CompletionOutput(index=i, text=b.text, token_ids=b.tokens[len(prompt_ids):],
                                            cumulative_logprob=b.cum_logprob, finish_reason=b.finish_reason)
                           for i, b in enumerate(result.sequences[:p.n])]
            self._request_counter += 1
            outputs.append(RequestOutput(request_id=f"llm-{self._request_counter}", prompt=text,
                                         prompt_token_ids=prompt_ids, prompt_logprobs=None, outputs=completions,
                                         finished=True))
        return outputs

    def chat(self, messages, sampling_params: SamplingParams | Seq[SamplingParams] | None = None, *,
             use_tqdm: bool = True, chat_template: str | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, tools: list | None = None,
             chat_template_kwargs: dict | None = None, lora_request=None, **kwargs) -> list[RequestOutput]:
        """Render one conversation (list of messages) or a list of conversations, then generate.

        Short form, as ``generate``: ``llm.chat(messages, max_tokens=50, temperature=0.7)``;
        ``lora_request`` as in ``generate`` (one, or one per conversation).
        """
        sampling_params = _short_form(sampling_params, kwargs, self.llm_engine.default_sampling_params)
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of messages or of conversations")
        conversations = messages if isinstance(messages[0], list) else [messages]
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            text = render_chat(tokenizer, conversation, chat_template=chat_template,
                               add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, tools=tools,
                               **(chat_template_kwargs or {}))
            # The template already holds the special tokens (BOS etc.): don't add them twice.
            prompts.append({"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False), "text": text})
        params = _params_list(sampling_params, len(prompts), self.get_default_sampling_params())
        outputs = self._run([{"prompt_token_ids": p["prompt_token_ids"]} for p in prompts], params, use_tqdm,
                            _lora_list(lora_request, len(prompts)))
        for out, p in zip(outputs, prompts):
            out.prompt = p["text"]
        return outputs

    def encode(self, prompts=None, pooling_params: PoolingParams | Seq[PoolingParams] | None = None, *,
               truncate_prompt_tokens: int | None = None, use_tqdm: bool = True) -> list[PoolingRequestOutput]:
        """Pool each input to one vector (a pooling model: ``runner="pooling"``); ``.outputs.data`` is a tensor.

        ``prompts``: a string, token ids, or a list of them; ``truncate_prompt_tokens`` applies to all
        (a longer input without it is a ValueError).
        """
        prompts = _as_prompt_list(prompts)
        params = _pooling_params_list(pooling_params, len(prompts), truncate_prompt_tokens)
        return self._run(prompts, params, use_tqdm)

    def embed(self, prompts=None, pooling_params: PoolingParams | Seq[PoolingParams] | None = None, *,
              truncate_prompt_tokens: int | None = None, use_tqdm: bool = True) -> list[EmbeddingRequestOutput]:
        """Embeddings, one per input: ``.outputs.embedding`` is a list of floats (vLLM's ``LLM.embed``)."""
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm)
        return [EmbeddingRequestOutput.from_base(out) for out in outputs]

    def _run(self, prompts: list, params: list, use_tqdm: bool, loras: list | None = None) -> list:
        engine = self.llm_engine
        ids = []
        try:
            for prompt, p, lora in zip(prompts, params, loras or [None] * len(prompts)):
                p = _final_only(p) if isinstance(p, SamplingParams) else p
                ids.append(engine.add_request(f"llm-{self._request_counter}", prompt, p, strict_max_tokens=True,
                                              lora_request=lora))
                self._request_counter += 1
        except Exception:
            engine.abort_request(ids)  # nothing half-added stays in the engine
            raise
        results: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True, disable=not use_tqdm)
        start, in_toks, out_toks = time.perf_counter(), 0, 0
        try:
            while len(results) < len(ids):
                for out in engine.step():
                    if out.finished:
                        results[out.request_id] = out
                        in_toks += len(out.prompt_token_ids)
                        out_toks += sum(len(c.token_ids) for c in out.outputs) if isinstance(out, RequestOutput) else 0
                        elapsed = max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix_str(f"est. speed input: {in_toks / elapsed:.2f} toks/s, "
                                            f"output: {out_toks / elapsed:.2f} toks/s", refresh=False)
                        bar.update(1)
        except BaseException:
            engine.abort_request([i for i in ids if i not in results])
            raise
        finally:
            bar.close()
        return [results[i] for i in ids]


def _short_form(sampling_params, kwargs: dict, defaults: dict):
    """``generate``/``chat``'s keyword short form: sampling options as keywords build the SamplingParams,
    over the model's generation_config defaults."""
    if not kwargs:
        return sampling_params
    if sampling_params is not None:
        raise TypeError(f"pass sampling options either as sampling_params or as keyword arguments "
                        f"({sorted(kwargs)}), not both")
    return SamplingParams.from_optional(**{**defaults, **kwargs})


def _final_only(p: SamplingParams) -> SamplingParams:
    if p.output_kind is RequestOutputKind.FINAL_ONLY:
        return p
    import copy

    p = copy.copy(p)
    p.output_kind = RequestOutputKind.FINAL_ONLY
    return p


def _as_prompt_list(prompts) -> list:
    if prompts is None:
        raise ValueError("prompts must be given (a string, token ids, or a list of them)")
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValueError("prompts must not be empty")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompts):
            return [list(prompts)]  # one tokenized prompt
        return list(prompts)
    raise TypeError(f"prompts must be a str, a list of token ids or a list of prompts, got {type(prompts).__name__}")


def _lora_list(lora_request, n: int) -> list:
    """``lora_request`` as one entry per prompt (vLLM: one LoRARequest for all, or a list)."""
    from pagedllm.lora.request import LoRARequest

    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * n
    if isinstance(lora_request, (list, tuple)):
        if len(lora_request) != n:
            raise ValueError(f"lora_request has {len(lora_request)} entries for {n} prompts; pass one LoRARequest "
                             "or one per prompt")
        for r in lora_request:
            if r is not None and not isinstance(r, LoRARequest):
                raise TypeError(f"lora_request entries must be LoRARequest or None, got {type(r).__name__}")
        return list(lora_request)
    raise TypeError(f"lora_request must be a LoRARequest or a list of them, got {type(lora_request).__name__}")


def _params_list(sampling_params, n: int, default: SamplingParams) -> list[SamplingParams]:
    if sampling_params is None:
        return [default] * n
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * n
    if isinstance(sampling_params, (list, tuple)):
        if len(sampling_params) != n:
            raise ValueError(f"sampling_params has {len(sampling_params)} entries for {n} prompts; "
                             "pass one SamplingParams or one per prompt")
        for p in sampling_params:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"sampling_params entries must be SamplingParams, got {type(p).__name__}")
        return list(sampling_params)
    raise TypeError(f"sampling_params must be SamplingParams or a list of them, got {type(sampling_params).__name__}")


def _pooling_params_list(pooling_params, n: int, truncate_prompt_tokens: int | None) -> list[PoolingParams]:
    if pooling_params is None:
        pooling_params = PoolingParams()
    items = [pooling_params] * n if isinstance(pooling_params, PoolingParams) else pooling_params
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, PoolingParams) for p in items):
        raise TypeError(f"pooling_params must be PoolingParams or a list of them, got {type(pooling_params).__name__}")
    if len(items) != n:
        raise ValueError(f"pooling_params has {len(items)} entries for {n} prompts; pass one PoolingParams or one "
                         "per prompt")
    if truncate_prompt_tokens is None:
        return list(items)
    return [dataclasses.replace(p, truncate_prompt_tokens=truncate_prompt_tokens) for p in items]
