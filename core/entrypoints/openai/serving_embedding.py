"""``/v1/embeddings`` (OpenAI's shapes) and vLLM's ``/pooling`` over a pooling engine.

Each input is its own engine request, so a batch of inputs shares steps with other clients'
inputs; a bad input is a 400 naming the field, and the request's other inputs are aborted with it. The float32 vector travels as JSON floats or as base64 of its little-endian bytes (what
the OpenAI SDK requests by default and decodes with numpy).
"""
from __future__ import annotations

import base64
import time
import uuid

from pagedllm.engine.llm_engine import ContextWindowError
from pagedllm.entrypoints.openai.protocol import APIError, EmbeddingRequest
from pagedllm.entrypoints.openai.serving_engine import OpenAIServing, check_capacity, engine_error
from pagedllm.pooling.params import PoolingParams


def as_inputs(value) -> list:
    """OpenAI's four input forms -> a list of str / token-id lists, each non-empty."""
    if isinstance(value, str):
        value = [value]
    elif value and all(isinstance(t, int) for t in value):
        value = [value]
    if not value:
        raise APIError("input must not be empty (send a string, a list of strings, or token ids)", param="input")
    for item in value:
        if len(item) == 0:
            raise APIError("input must not contain an empty string or an empty token list", param="input")
    return list(value)


class ServingEmbedding(OpenAIServing):
    async def create(self, req: EmbeddingRequest, *, pooling: bool = False) -> dict:
        name = self.model_name(req.model)
        inputs = as_inputs(req.input)
        try:
            params = PoolingParams(dimensions=req.dimensions, normalize=req.normalize,
                                   truncate_prompt_tokens=req.truncate_prompt_tokens)
        except (ValueError, TypeError) as exc:
            raise APIError(str(exc), param="dimensions" if "dimensions" in str(exc) else "truncate_prompt_tokens")
        check_capacity(self.engine)
        request_id = f"embd-{uuid.uuid4().hex}"
        vectors: list = [None] * len(inputs)
        prompt_tokens = 0
        try:
            async for i, out in self.generate_all(inputs, [params] * len(inputs), request_id):
                vectors[i] = out.outputs.data
                prompt_tokens += len(out.prompt_token_ids)
        except ContextWindowError as exc:
            raise APIError(str(exc), param="input") from None
        except ValueError as exc:
            raise APIError(str(exc), param=_param_of(str(exc))) from None
        except Exception as exc:  # noqa: BLE001 - the engine's errors, OpenAI-shaped
            raise engine_error(exc) from exc
        data = [{"index": i, "object": "pooling" if pooling else "embedding",
                 ("data" if pooling else "embedding"): _encode(v, req.encoding_format)} for i, v in enumerate(vectors)]
        return {"id": request_id, "object": "list", "created": int(time.time()), "model": name, "data": data,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def _encode(vector, encoding_format: str):
    values = vector.float().cpu().numpy().astype("<f4")
    if encoding_format == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return values.tolist()


def _param_of(message: str) -> str:
    for field in ("dimensions", "truncate_prompt_tokens"):
        if field in message:
            return field
    return "input"

