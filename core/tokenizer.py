"""Tokenizer loading, chat-template rendering and incremental detokenization."""
from __future__ import annotations

from transformers import AutoTokenizer

from pagedllm.names import did_you_mean
from pagedllm.tool_calling import messages_for_template

# The chat roles accepted everywhere (LLM.chat, the adapters, the server's ChatMessage): OpenAI's.
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

# Tokens of prompt context re-decoded with the output, so the first output token gets the
# right leading space (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET).
_PROMPT_CONTEXT = 5


def load_tokenizer(path: str, *, tokenizer_mode: str = "auto", trust_remote_code: bool = False,
                   revision: str | None = None):
    return AutoTokenizer.from_pretrained(path, use_fast=tokenizer_mode != "slow",
                                         trust_remote_code=trust_remote_code, revision=revision)


def render_chat(tokenizer, messages: list[dict], *, chat_template: str | None = None,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                tools: list | None = None, **template_kwargs) -> str:
    """The model's chat template applied to ``messages`` (a clear error when it has none).

    Every chat path renders here (LLM.chat, the server, the providers under ChatVLLM, the CLI), so all
    prompt the model alike: earlier tool calls reach the template in the form it reads, and ``tools``
    are described in the system message when the template has no tools section
    (``tool_calling.messages_for_template``)."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; pass chat_template= "
                         "(a Jinja template string or file) or use generate() with a plain prompt")
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"messages[{i}] must be a dict with a 'role' key, got {m!r}")
        role = m["role"]
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role={role!r} is not a chat role{did_you_mean(role, CHAT_ROLES)}; "
                             f"accepted: {list(CHAT_ROLES)}")
    messages = messages_for_template(messages, tools, chat_template or tokenizer.chat_template)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message, tools=tools, **template_kwargs)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas; never emits a broken UTF-8 char.

    Decodes a small window of ids twice per token (the already-emitted part and the part with
    the new token) and emits the difference once it no longer ends in U+FFFD.
    """

    __slots__ = ("_decode", "skip_special_tokens", "prefix_offset", "read_offset")

    def __init__(self, tokenizer, prompt_token_ids: list[int], skip_special_tokens: bool = True):
        backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        if backend is not None and hasattr(backend, "decode"):
            self._decode = backend.decode
        else:
            self._decode = lambda ids, skip_special_tokens: tokenizer.decode(
                ids, skip_special_tokens=skip_special_tokens)
        self.skip_special_tokens = skip_special_tokens
        self.read_offset = len(prompt_token_ids)
        self.prefix_offset = max(self.read_offset - _PROMPT_CONTEXT, 0)

    def step(self, token_ids: list[int]) -> str:
        """All ids so far (prompt + output) -> the new text they add, possibly ''."""
        skip = self.skip_special_tokens
        prefix = self._decode(token_ids[self.prefix_offset:self.read_offset], skip_special_tokens=skip)
        full = self._decode(token_ids[self.prefix_offset:], skip_special_tokens=skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(token_ids)
            return full[len(prefix):]
        return ""
