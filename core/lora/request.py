"""``LoRARequest``: which adapter a request runs under (vLLM's names and fields)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LoRARequest:
    """A PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) by name and id.

    ``lora_int_id`` (>= 1) identifies the adapter inside the engine: its slot, its prefix-cache
    blocks. Two requests with the same id must name the same adapter; vLLM has the same rule.
    """

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    lora_local_path: str | None = field(default=None, repr=False)  # vLLM's deprecated alias of lora_path
    long_lora_max_len: int | None = field(default=None, repr=False)  # accepted for vLLM compatibility, unused
    base_model_name: str | None = None  # the server's base model (``/v1/models`` parent)

    def __post_init__(self):
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError(f"lora_name must be a non-empty string, got {self.lora_name!r}")
        if isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be an int >= 1 (adapter {self.lora_name!r}), got {self.lora_int_id!r}")
        if not self.lora_path and self.lora_local_path:
            object.__setattr__(self, "lora_path", self.lora_local_path)
        if not isinstance(self.lora_path, str) or not self.lora_path:
            raise ValueError(f"lora_path must name the adapter folder of {self.lora_name!r}, got {self.lora_path!r}")

    # vLLM's short names
    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path
