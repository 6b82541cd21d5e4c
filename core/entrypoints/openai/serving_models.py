"""The names a client may send as ``model``: the served base names and the LoRA adapters (vLLM's
``OpenAIServingModels``). ``--lora-modules`` registers adapters at start; with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true`` the server also takes vLLM's ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass

from pagedllm.entrypoints.openai.protocol import APIError
from pagedllm.lora.request import LoRARequest

RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"  # vLLM's switch, same name and values


def runtime_lora_updating_allowed() -> bool:
    return os.environ.get(RUNTIME_LORA_ENV, "").strip().lower() in ("1", "true")


@dataclass(frozen=True)
class LoRAModulePath:
    """One ``--lora-modules`` entry: ``name=path`` or vLLM's JSON ``{"name", "path", "base_model_name"}``."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoRAModulePath:
    """argparse type of ``--lora-modules``; a ValueError names the flag and both accepted forms."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
            return LoRAModulePath(str(spec["name"]), str(spec["path"]), spec.get("base_model_name"))
        except (ValueError, KeyError, TypeError):
            pass
    elif "=" in text:
        name, path = text.split("=", 1)
        if name.strip() and path.strip():
            return LoRAModulePath(name.strip(), path.strip())
    raise ValueError(f"--lora-modules {text!r}: use name=path or "
                     '\'{"name": "...", "path": "...", "base_model_name": "..."}\'')


class ServingModels:
    def __init__(self, engine, base_names: list[str]):
        self.engine = engine
        self.base_names = list(base_names)
        self.adapters: dict[str, LoRARequest] = {}
        self._lock = threading.Lock()

    @property
    def lora_enabled(self) -> bool:
        return self.engine.engine.lora_manager is not None

    def add_lora(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        """Register (and read and check now) an adapter under ``name``; ValueError naming it when bad."""
        if not self.lora_enabled:
            raise ValueError(f"LoRA adapter {name!r}: the server was started without --enable-lora")
        if name in self.base_names:
            raise ValueError(f"LoRA adapter {name!r}: the name is the base model's; choose another")
        with self._lock:
            if name in self.adapters:
                raise ValueError(f"The lora adapter '{name}' has already been loaded.")
            lora_id = self.engine.engine.lora_manager.new_lora_id()
            request = LoRARequest(name, lora_id, path, base_model_name=base_model_name or self.base_names[0])
        self.engine.engine.load_lora(request)  # raises on a bad folder; nothing registered then
        with self._lock:
            self.adapters[name] = request
        return request

    def remove_lora(self, name: str) -> None:
        """Forget the name: new requests cannot select it (running ones finish; its slot ages out LRU)."""
        with self._lock:
            if self.adapters.pop(name, None) is None:
                raise APIError(f"The lora adapter '{name}' cannot be found.", status_code=404, type="NotFoundError",
                               param="lora_name", code="model_not_found")

    def is_served(self, name: str | None) -> bool:
        return name is None or name in self.base_names or name in self.adapters

    def lora_request(self, name: str | None) -> LoRARequest | None:
        return self.adapters.get(name) if name else None

    def names(self) -> list[str]:
        return self.base_names + list(self.adapters)

    def cards(self, root: str, max_model_len: int) -> list[dict]:
        """``/v1/models`` entries: the base names, then each adapter with ``parent`` = its base model."""
        base = [{"id": n, "object": "model", "created": 0, "owned_by": "pagedllm", "root": root, "parent": None,
                 "max_model_len": max_model_len} for n in self.base_names]
        return base + [{"id": n, "object": "model", "created": 0, "owned_by": "pagedllm", "root": r.lora_path,
                        "parent": r.base_model_name, "max_model_len": max_model_len}
                       for n, r in list(self.adapters.items())]
