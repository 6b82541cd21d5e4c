"""How one chat request uses tools: which tools the prompt shows, how decoding is constrained and which
parser reads the answer (vLLM's semantics for ``tool_choice``).

* ``none`` (the default without tools): the tools are still shown (vLLM's default), nothing is parsed.
* ``auto`` (the default with tools): the model decides; the server's ``--tool-call-parser`` reads its
  answer. Needs ``--enable-auto-tool-choice``, as in vLLM.
* ``required`` / a named function: decoding is constrained to call objects (``tool_calling.forced_call_schema``),
  so the arguments always parse and match the function's schema.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagedllm.entrypoints.openai.protocol import APIError, ChatCompletionRequest
from pagedllm.tool_calling import forced_call_schema
from pagedllm.tool_parsers import ForcedToolParser, ToolParser


@dataclass
class ToolUse:
    tools: list[dict] | None  # OpenAI tool dicts for the prompt
    parser: ToolParser | None  # reads calls out of the answer (None: plain content)
    structured_outputs: dict | None  # the forced-call grammar
    parallel: bool  # more than one call per answer

    def keep(self, calls: list) -> list:
        """The calls an answer may carry: all, or only the first when parallel calls are off."""
        return calls if self.parallel else calls[:1]

    def keeps_fragment(self, fragment: dict) -> bool:
        """``keep`` for a streamed call fragment (its ``index`` is the call's place in the answer)."""
        return self.parallel or fragment["index"] == 0

    @staticmethod
    def finish_reason(called: bool, reason: str | None) -> str | None:
        """An answer that made a call and stopped by itself finished with ``tool_calls`` (OpenAI's reason)."""
        return "tool_calls" if called and reason == "stop" else reason


def tool_use(req: ChatCompletionRequest, tokenizer, auto_parser: type[ToolParser] | None) -> ToolUse:
    """Resolve ``tools``/``tool_choice``/``parallel_tool_calls``; a combination that cannot work is a 400."""
    if req.functions:
        raise APIError("`functions` (OpenAI's deprecated form) is not supported; send `tools` "
                       "([{\"type\": \"function\", \"function\": {...}}]) instead", param="functions",
                       code="unsupported_parameter")
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    parallel = req.parallel_tool_calls is not False
    if choice == "none":
        return ToolUse(tools, None, None, parallel)
    if not tools:
        raise APIError(f"tool_choice={_shown(choice)} needs `tools`", param="tool_choice")
    if choice == "auto":
        if auto_parser is None:
            raise APIError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set '
                           '(or send tool_choice "required", "none" or {"type": "function", "function": {"name": '
                           '...}})', param="tool_choice")
        return ToolUse(tools, auto_parser(tokenizer), None, parallel)
    if req.response_format is not None and req.response_format.type != "text" or req.structured_outputs:
        raise APIError(f"tool_choice={_shown(choice)} constrains the output to tool calls; it cannot be combined with "
                       "response_format or structured_outputs", param="tool_choice")
    name = None if choice == "required" else choice.function.name
    parallel = parallel and name is None
    try:
        schema = forced_call_schema(tools, name, parallel=parallel)
    except ValueError as exc:
        raise APIError(str(exc), param="tool_choice") from None
    grammar = {"json": schema, "disable_any_whitespace": True, "disable_additional_properties": True}
    return ToolUse(tools, ForcedToolParser(tokenizer), grammar, parallel)


def _shown(choice) -> str:
    return repr(choice) if isinstance(choice, str) else f"{{function: {choice.function.name!r}}}"
