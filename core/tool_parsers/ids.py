"""Tool-call ids in OpenAI's shape (``call_`` + 24 hex digits)."""
import uuid


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
