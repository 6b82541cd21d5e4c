"""OpenAI (and vLLM-extra) request/response models, and the request -> SamplingParams mapping.

Requests are validated from the raw body (``model_validate_json``) so bad JSON, bad UTF-8
and wrong types all become one OpenAI-shaped 400 naming the field. Unknown fields are
ignored (as OpenAI and vLLM do) but logged as a warning naming them and listed in the
``x-pagedllm-ignored-fields`` response header (``routes/http_io.py``); known fields of the
wrong type are errors.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import fields
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from pagedllm.sampling_params import RequestOutputKind, SamplingParams

Int = StrictInt
Float = Annotated[float, Field(strict=False)]


class APIError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with ``status_code``."""

    def __init__(self, message: str, *, status_code: int = 400, type: str = "BadRequestError",
                 param: str | None = None, code: str | int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status_code, self.type, self.param = message, status_code, type, param
        self.headers = headers  # extra response headers (503's Retry-After)
        self.code = code if code is not None else status_code  # vLLM's ErrorResponse: the status as a number

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- requests ----------------------------------------------------------------------------
class StreamOptions(OpenAIModel):
    include_usage: StrictBool | None = False
    continuous_usage_stats: StrictBool | None = False


class JsonSchema(OpenAIModel):
    name: StrictStr | None = None
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class SamplingFields(OpenAIModel):
    """Fields shared by completions and chat: OpenAI's, then vLLM's extras."""

    model: StrictStr | None = None
    max_tokens: Int | None = Field(default=None, ge=1)
    temperature: Float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: Float | None = Field(default=None, gt=0.0, le=1.0)
    n: Int | None = Field(default=None, ge=1, le=128)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: Int | None = None
    presence_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Float] | None = None
    user: StrictStr | None = None
    response_format: ResponseFormat | None = None
    # vLLM extras
    best_of: Int | None = Field(default=None, ge=1)
    top_k: Int | None = Field(default=None, ge=-1)
    min_p: Float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Float | None = Field(default=None, gt=0.0)
    ignore_eos: StrictBool | None = None
    min_tokens: Int | None = Field(default=None, ge=0)
    stop_token_ids: list[Annotated[int, Field(strict=True, ge=0)]] | None = None
    skip_special_tokens: StrictBool | None = None
    spaces_between_special_tokens: StrictBool | None = None
    include_stop_str_in_output: StrictBool | None = None
    structured_outputs: dict[str, Any] | None = None
    prompt_logprobs: Int | None = Field(default=None, ge=0)
    add_special_tokens: StrictBool | None = None


class CompletionRequest(SamplingFields):
    prompt: StrictStr | list[StrictStr] | list[Int] | list[list[Int]]
    echo: StrictBool | None = False
    logprobs: Int | None = Field(default=None, ge=0, le=20)
    suffix: StrictStr | None = None


class FunctionCall(OpenAIModel):
    name: StrictStr
    arguments: StrictStr  # JSON text, as OpenAI sends and returns it


class ToolCall(OpenAIModel):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]  # tokenizer.CHAT_ROLES, tested equal
    content: StrictStr | list[dict[str, Any]] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: StrictStr | None = None


class FunctionDefinition(OpenAIModel):
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments object
    strict: StrictBool | None = None  # forced calls always follow the schema; auto ones are parsed as written


class ChatCompletionTool(OpenAIModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(OpenAIModel):
    name: StrictStr


class NamedToolChoice(OpenAIModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: Int | None = Field(default=None, ge=0, le=20)
    tools: list[ChatCompletionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[dict[str, Any]] | None = None
    # vLLM extras
    echo: StrictBool | None = False
    chat_template: StrictStr | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: StrictBool | None = True
    continue_final_message: StrictBool | None = False


class TokenizeRequest(OpenAIModel):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: StrictBool | None = True
    add_generation_prompt: StrictBool | None = True


class DetokenizeRequest(OpenAIModel):
    model: StrictStr | None = None
    tokens: list[Annotated[int, Field(strict=True, ge=0)]]


class EmbeddingRequest(OpenAIModel):
    """OpenAI's embeddings request (plus vLLM's ``truncate_prompt_tokens`` and ``normalize``)."""

    model: StrictStr | None = None
    input: Union[StrictStr, list[StrictStr], list[Annotated[int, Field(strict=True)]],
                 list[list[Annotated[int, Field(strict=True)]]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int | None = None
    user: StrictStr | None = None
    truncate_prompt_tokens: Int | None = None
    normalize: StrictBool | None = None


class PoolingRequest(EmbeddingRequest):
    """vLLM's ``/pooling``: the same input, the pooled vectors as nested lists."""


# ---- responses ---------------------------------------------------------------------------
class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionChoice(OpenAIModel):
    index: int
    text: str
    logprobs: dict | None = None
    finish_reason: str | None = None
    stop_reason: Union[int, str, None] = None


class CompletionResponse(OpenAIModel):
    id: str
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class DeltaFunctionCall(OpenAIModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(OpenAIModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None


class ChatDelta(OpenAIModel):
    role: str | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatResponseMessage(OpenAIModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(OpenAIModel):
    index: int
    message: ChatResponseMessage
    logprobs: dict | None = None
    finish_reason: str | None = None
    stop_reason: Union[int, str, None] = None


class ChatStreamChoice(OpenAIModel):
    index: int
    delta: ChatDelta
    logprobs: dict | None = None
    finish_reason: str | None = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: str = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None


class EmbeddingData(OpenAIModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # floats, or base64 of little-endian float32 (encoding_format)


class PoolingData(OpenAIModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float] | str


class EmbeddingUsage(OpenAIModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(OpenAIModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


class PoolingResponse(EmbeddingResponse):
    data: list[PoolingData]


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model
    max_model_len: int | None = None


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(OpenAIModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(OpenAIModel):
    prompt: str


class GenerateRequest(BaseModel):
    """vLLM's legacy ``/generate``: the prompt, ``stream``, and any ``SamplingParams`` field by name."""

    model_config = ConfigDict(extra="allow")
    prompt: StrictStr = Field(min_length=1)
    stream: StrictBool = False


class GenerateResponse(OpenAIModel):
    text: list[str]  # the prompt followed by each sample's text


class VersionResponse(OpenAIModel):
    version: str


class ErrorInfo(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(OpenAIModel):
    """Every error, OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# ---- request -> SamplingParams -------------------------------------------------------------
_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams) if not f.name.startswith("_")}
# Values that mean "feature not used": such a field is dropped even where the engine lacks it.
_NEUTRAL = {"n": 1, "best_of": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "repetition_penalty": 1.0, "logit_bias": {}, "stop": [], "include_stop_str_in_output": False}
# Fields SamplingParams declares but the engine does not fill yet. Enabling one = deleting it here.
ENGINE_PENDING = {"prompt_logprobs"}


def build_sampling_params(req: SamplingFields, defaults: dict, *, max_tokens: int | None, logprobs: int | None,
                          structured_outputs: dict | None) -> SamplingParams:
    """Map request fields onto ``SamplingParams``; a field the engine cannot honour yet is a 400.

    ``defaults`` (the model's generation_config, vLLM's default_sampling_params) fill the fields the
    request leaves unset."""
    stop = [req.stop] if isinstance(req.stop, str) else req.stop
    wanted = {
        "n": req.n, "best_of": req.best_of, "temperature": req.temperature, "top_p": req.top_p,
        "top_k": req.top_k, "min_p": req.min_p, "seed": req.seed, "max_tokens": max_tokens,
        "min_tokens": req.min_tokens, "stop": stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "logprobs": logprobs, "prompt_logprobs": req.prompt_logprobs,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "logit_bias": {int(k): v for k, v in req.logit_bias.items()} if _int_keys(req.logit_bias) else req.logit_bias,
        "skip_special_tokens": req.skip_special_tokens,
        "spaces_between_special_tokens": req.spaces_between_special_tokens,
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "structured_outputs": structured_outputs,
    }
    kwargs = {}
    for name, value in wanted.items():
        if value is None:
            value = defaults.get(name)
        if value is None or (name in _NEUTRAL and value == _NEUTRAL[name]):
            continue
        if name not in _SAMPLING_FIELDS or name in ENGINE_PENDING:
            raise APIError(f"`{name}` is not supported yet by this server (it is on the roadmap)",
                           param=name, code="unsupported_parameter")
        kwargs[name] = value
    try:
        params = SamplingParams.from_optional(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        param = message.split("=", 1)[0].split(" ", 1)[0] if message else None
        raise APIError(message, param=param if param in wanted else None) from exc
    if params.best_of is not None and params.best_of > params.n:
        # Which n samples win is known only at the end: one final output carries them whole.
        if req.stream:
            raise APIError(f"best_of={params.best_of} > n={params.n} cannot be streamed", param="best_of")
        params.output_kind = RequestOutputKind.FINAL_ONLY
    else:
        params.output_kind = RequestOutputKind.DELTA
    return params


def _int_keys(bias: dict | None) -> bool:
    if not bias:
        return False
    try:
        [int(k) for k in bias]
    except ValueError:
        raise APIError("logit_bias keys must be token ids (integers as strings)", param="logit_bias") from None
    return True


def structured_outputs_for(req: SamplingFields) -> dict | None:
    """``response_format`` as vLLM ``structured_outputs`` (json schema / any JSON object)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return req.structured_outputs
    if fmt.type == "json_object":
        return {"json_object": True}
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise APIError("response_format of type json_schema needs json_schema.schema",
                       param="response_format")
    return {"json": fmt.json_schema.schema_}


# ---- LoRA adapters at runtime (vLLM's /v1/load_lora_adapter, /v1/unload_lora_adapter) --------------
class LoadLoRAAdapterRequest(OpenAIModel):
    lora_name: StrictStr
    lora_path: StrictStr


class UnloadLoRAAdapterRequest(OpenAIModel):
    lora_name: StrictStr
    lora_int_id: int | None = None  # vLLM accepts it; the name is what identifies the adapter here
