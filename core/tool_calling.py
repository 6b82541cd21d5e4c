"""Tool calling shared by the server and ChatVLLM, so both paths prompt the model the same way and
force the same calls.

* Tools reach the model through its chat template when the template renders them; otherwise they
  are described in the system message, with the JSON shape of a call (``with_tools_in_system``).
* Earlier calls in the conversation (an assistant message's ``tool_calls``) go to the template in
  OpenAI's shape with the arguments as an object (what Hugging Face templates iterate over); a
  template without tool support sees them as the JSON it was asked to write.
* ``tool_choice`` ``required`` or a named function constrain decoding to ``forced_call_schema``: one
  ``{"name": ..., "arguments": {...}}`` object, or a JSON array of them when parallel calls are allowed.
"""
from __future__ import annotations

import json


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template reads ``tools`` (Hugging Face tool templates all do)."""
    return bool(template) and "tools" in template


def messages_for_template(messages: list[dict], tools: list | None, template: str | None) -> list[dict]:
    """``messages`` (OpenAI dicts) ready for ``template``: calls in the form it understands, and the tools
    described in the system message when the template would drop them."""
    renders = template_renders_tools(template)
    out = [_message_for_template(m, renders) for m in messages]
    if tools and not renders:
        out = with_tools_in_system(out, tools)
    return out


def _message_for_template(message: dict, renders_tools: bool) -> dict:
    calls = message.get("tool_calls")
    if not calls:
        return message
    calls = [_call_with_object_arguments(c) for c in calls]
    if renders_tools:
        return {**message, "tool_calls": calls}
    shown = "\n".join(json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
                      for c in calls)
    content = message.get("content") or ""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**out, "content": f"{content}\n{shown}" if content else shown}


def _call_with_object_arguments(call: dict) -> dict:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            pass  # templates print it as it came
    return {**call, "type": call.get("type", "function"), "function": function}


def with_tools_in_system(messages: list[dict], tools: list) -> list[dict]:
    """Describe ``tools`` (OpenAI function specs) in the system message, for templates without tools.

    Each tool is shown as its JSON spec followed by the shape of a call to it, with a typed
    placeholder for each argument (``{"name": "f", "arguments": {"x": <integer>}}``): a small model
    shown only the JSON schema copies the schema's own shape into its arguments (``{"x": {...}}``).
    """
    lines = ["You can call these tools. To call one, answer only with JSON "
             '{"name": <tool name>, "arguments": <arguments object>}.']
    for tool in tools:
        spec = tool.get("function", tool)
        lines += [json.dumps(spec), "A call to it: " + example_call(spec)]
    return with_system_note(messages, "\n".join(lines))


def example_call(spec: dict) -> str:
    """``{"name": ..., "arguments": {arg: <type>, ...}}`` for one OpenAI function spec."""
    props = (spec.get("parameters") or {}).get("properties") or {}
    args = ", ".join(f"{json.dumps(k)}: <{_type_name(v)}>" for k, v in props.items())
    return f'{{"name": {json.dumps(spec.get("name"))}, "arguments": {{{args}}}}}'


def _type_name(schema: dict) -> str:
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        return " or ".join(map(str, kind))
    if kind is None and isinstance(schema, dict) and "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    return kind or "value"


def with_system_note(messages: list[dict], note: str) -> list[dict]:
    """``note`` appended to the system message (or as one, first)."""
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def forced_call_schema(tools: list[dict], name: str | None = None, *, parallel: bool = False) -> dict:
    """JSON schema of a call to one of ``tools`` (to the one named ``name``); with ``parallel``, of a non-empty
    JSON array of such calls."""
    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise ValueError(f"tool_choice names {name!r}, which is not one of the tools "
                             f"{[t.get('function', t).get('name') for t in tools]}")
    options = []
    for f in functions:
        args = dict(f.get("parameters") or {"type": "object", "properties": {}})
        args.setdefault("additionalProperties", False)
        options.append({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": args},
                        "required": ["name", "arguments"], "additionalProperties": False})
    one = options[0] if len(options) == 1 else {"anyOf": options}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one
