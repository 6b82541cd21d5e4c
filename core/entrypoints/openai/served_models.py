"""The models one server hosts, and which of them answers a request.

``pagedllm serve CHAT --also EMBEDDER`` runs one engine per model (what Ollama does and vLLM does
not): a request's ``model`` picks the engine (a LoRA adapter's name picks the engine it belongs to); an unknown name is a 404 listing the served ones,
and a model asked for what its runner cannot do (an embedding model for chat, a chat model for
embeddings) is a 400 naming the runner. Without ``model`` the first model that can answer does.
"""
from __future__ import annotations

from dataclasses import dataclass

from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.entrypoints.openai.protocol import APIError


@dataclass
class ServedModel:
    """One engine and the names clients use for it; its handlers are made for its runner only."""

    engine: AsyncEngine
    names: list[str]
    chat: object = None  # ServingChat (generate runner)
    completions: object = None  # ServingCompletion (generate runner)
    embeddings: object = None  # ServingEmbedding (pooling runner)

    @property
    def runner(self) -> str:
        return self.engine.engine.runner_type


_NEEDS = {"generate": "a generation model", "pooling": "an embedding (pooling) model"}


class ServedModels:
    def __init__(self, models: list[ServedModel]):
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = models
        seen: dict[str, ServedModel] = {}
        for model in models:
            for name in model.names:
                if name in seen:
                    raise ValueError(f"served model name {name!r} is used twice; give each model its own name")
                seen[name] = model
        self._by_name = seen

    @property
    def main(self) -> ServedModel:
        return self.models[0]

    @property
    def names(self) -> list[str]:
        """Every name a client may send: the models', then each engine's LoRA adapters."""
        return list(self._by_name) + [n for m in self.models if m.chat is not None for n in m.chat.models.adapters]

    def _with_adapter(self, name: str) -> ServedModel | None:
        """The generation model that has a LoRA adapter called ``name`` (``--lora-modules``, loaded at runtime)."""
        return next((m for m in self.models if m.chat is not None and name in m.chat.models.adapters), None)

    def cards(self) -> list[dict]:
        """``/v1/models``: each model's names, a generation model's LoRA adapters after it (``parent`` = its base)."""
        cards = []
        for m in self.models:
            root, max_len = m.engine.engine.config.model, m.engine.max_model_len
            if m.chat is not None:
                cards += m.chat.models.cards(root, max_len)
            else:
                cards += [{"id": n, "object": "model", "created": 0, "owned_by": "pagedllm", "root": root,
                           "parent": None, "max_model_len": max_len} for n in m.names]
        return cards

    def get(self, requested: str | None, runner: str | None = None, endpoint: str = "") -> ServedModel:
        """The model for ``requested`` (None: the first that can answer), checked against the ``runner`` the
        endpoint needs."""
        if requested is None:
            model = next((m for m in self.models if runner in (None, m.runner)), self.main)
        else:
            model = self._by_name.get(requested) or self._with_adapter(requested)
        if model is None:
            raise APIError(f"The model `{requested}` does not exist. Served: {self.names}", status_code=404,
                           type="NotFoundError", param="model", code="model_not_found")
        if runner is not None and model.runner != runner:
            shown = requested or model.names[0]
            served = [n for m in self.models if m.runner == runner for n in m.names]
            raise APIError(f"model `{shown}` runs as runner='{model.runner}'; {endpoint} needs {_NEEDS[runner]} "
                           f"(served ones: {served or 'none'})", param="model")
        return model
