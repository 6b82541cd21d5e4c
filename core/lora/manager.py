"""Which adapters are loaded (host memory, ``max_cpu_loras``) and which sit in the model's slots
(``max_loras``), both least-recently-used first out.

Loading (read the folder, check it against the model, place it on the layers) is the slow part
and runs where the request comes in (``load``; the async engine calls it on the caller's thread),
so it never holds up the steps of other requests. A step then only ``activate``s the adapters it
runs: one in a slot already costs nothing, a new one is copied into a free or least recently used
slot that this step does not need. The scheduler keeps a step's distinct adapters at ``max_loras``.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import torch
from torch import nn

from pagedllm.lora.layers import wrap_lora_layers
from pagedllm.lora.peft_adapter import LayerPiece, map_to_layers, read_peft_adapter
from pagedllm.lora.punica import LoRAMapping
from pagedllm.lora.request import LoRARequest

logger = logging.getLogger(__name__)


class LoadedAdapter:
    __slots__ = ("request", "rank", "layers")

    def __init__(self, request: LoRARequest, rank: int, layers: dict[str, list[LayerPiece]]):
        self.request = request
        self.rank = rank
        self.layers = layers


class LoRAManager:
    def __init__(self, model: nn.Module, max_loras: int, max_lora_rank: int, max_cpu_loras: int | None,
                 dtype: torch.dtype, device: torch.device):
        self.model = model
        self.device = torch.device(device)
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self.max_cpu_loras = max(max_cpu_loras or max_loras, max_loras)
        self.layers = wrap_lora_layers(model, max_loras, max_lora_rank, dtype, device)
        if not self.layers:
            raise ValueError(f"enable_lora=True: {type(model).__name__} has no layer LoRA adapters can target")
        self._lock = threading.Lock()
        self.loaded: OrderedDict[int, LoadedAdapter] = OrderedDict()  # host cache, LRU first
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # lora_int_id -> slot, LRU first
        self.free_slots = list(range(max_loras))
        self.num_loads = 0  # folders read (a reload after eviction counts again)
        self.num_activations = 0  # adapters copied into a slot
        self._issued_ids: set[int] = set()

    def new_lora_id(self) -> int:
        """An id no adapter of this engine uses yet (for names registered by the server)."""
        with self._lock:
            lora_id = 1
            while lora_id in self._issued_ids or lora_id in self.loaded:
                lora_id += 1
            self._issued_ids.add(lora_id)
            return lora_id

    # --- host cache -----------------------------------------------------------------------------
    def load(self, request: LoRARequest) -> LoadedAdapter:
        """Read and check ``request``'s folder unless loaded; ValueError naming the adapter when bad."""
        if not isinstance(request, LoRARequest):
            raise TypeError(f"lora_request must be a LoRARequest, got {type(request).__name__}")
        with self._lock:
            known = self.loaded.get(request.lora_int_id)
            if known is not None:
                self._check_same(known.request, request)
                self.loaded.move_to_end(request.lora_int_id)
                return known
        adapter = read_peft_adapter(request, self.max_lora_rank)
        loaded = LoadedAdapter(request, adapter.rank, map_to_layers(adapter, self.model, self.layers))
        with self._lock:
            known = self.loaded.get(request.lora_int_id)
            if known is not None:  # another thread loaded it meanwhile
                self._check_same(known.request, request)
                return known
            self.loaded[request.lora_int_id] = loaded
            self.num_loads += 1
            self._shrink_host_cache()
        logger.info("loaded LoRA adapter %r (id %d, rank %d, %d layers) from %s", request.lora_name,
                    request.lora_int_id, adapter.rank, len(loaded.layers), request.lora_path)
        return loaded

    @staticmethod
    def _check_same(known: LoRARequest, request: LoRARequest) -> None:
        if (known.lora_name, known.lora_path) != (request.lora_name, request.lora_path):
            raise ValueError(f"lora_int_id={request.lora_int_id} is adapter {known.lora_name!r} "
                             f"({known.lora_path}); adapter {request.lora_name!r} ({request.lora_path}) needs "
                             "another id")

    def _shrink_host_cache(self) -> None:
        """Drop least recently used adapters past ``max_cpu_loras`` (the most recent one stays). One that
        sits in a slot keeps working from there; it is read again only if it must be re-activated."""
        while len(self.loaded) > self.max_cpu_loras:
            self.loaded.popitem(last=False)

    def remove(self, lora_int_id: int) -> bool:
        """Forget an adapter (its slot too); the caller makes sure no request still runs it."""
        with self._lock:
            slot = self.slot_of.pop(lora_int_id, None)
            if slot is not None:
                for layer in self.layers.values():
                    layer.clear_slot(slot)
                self.free_slots.append(slot)
            return self.loaded.pop(lora_int_id, None) is not None

    def list_loras(self) -> list[LoRARequest]:
        return [a.request for a in self.loaded.values()]

    # --- slots ----------------------------------------------------------------------------------
    def activate(self, requests: list[LoRARequest]) -> dict[int, int]:
        """Put a step's adapters (at most ``max_loras`` distinct ones) into slots; lora_int_id -> slot."""
        needed = {r.lora_int_id: r for r in requests}
        if len(needed) > self.max_loras:
            raise RuntimeError(f"a step has {len(needed)} adapters but max_loras={self.max_loras}")
        for lora_id, request in needed.items():
            if lora_id in self.slot_of:
                self.slot_of.move_to_end(lora_id)
                continue
            adapter = self.loaded.get(lora_id) or self.load(request)  # dropped from the host cache: read again
            slot = self.free_slots.pop() if self.free_slots else self._evict(needed)
            for name, layer in self.layers.items():
                pieces = adapter.layers.get(name)
                if pieces:
                    layer.set_slot(slot, pieces)
                else:
                    layer.clear_slot(slot)
            self.slot_of[lora_id] = slot
            self.num_activations += 1
        with self._lock:
            for lora_id in needed:
                if lora_id in self.loaded:
                    self.loaded.move_to_end(lora_id)
            self._shrink_host_cache()
        return {lora_id: self.slot_of[lora_id] for lora_id in needed}

    def _evict(self, needed: dict) -> int:
        for lora_id in self.slot_of:  # least recently used first
            if lora_id not in needed:
                return self.slot_of.pop(lora_id)
        raise RuntimeError("no LoRA slot to evict")  # activate() checked len(needed) <= max_loras

    def order_step(self, scheduled: list, order: list[int], num_decodes: int) -> tuple[list[int], LoRAMapping | None]:
        """Sort the runner's order (decodes, then prefill chunks) by adapter within each part, activate
        the step's adapters, and map their tokens: ``(order, LoRAMapping or None)``."""
        requests = [s.seq.lora_request for s in scheduled if s.seq.lora_request is not None]
        if not requests:
            return order, None
        key = lambda i: _lora_id(scheduled[i].seq)  # noqa: E731
        order = sorted(order[:num_decodes], key=key) + sorted(order[num_decodes:], key=key)
        slots = self.activate(requests)
        segments, start = [], 0
        for i in order:
            s = scheduled[i]
            lora, n = s.seq.lora_request, s.num_new_tokens
            if lora is not None:
                slot = slots[lora.lora_int_id]
                if segments and segments[-1][0] == slot and segments[-1][2] == start:
                    segments[-1] = (slot, segments[-1][1], start + n)
                else:
                    segments.append((slot, start, start + n))
            start += n
        if self.device.type != "cuda":
            return order, LoRAMapping(tuple(segments), start)
        # the SGMV kernels read the segments from the device: one copy per step, not per layer
        table = torch.tensor(segments, dtype=torch.int32).to(self.device, non_blocking=True)
        return order, LoRAMapping(tuple(segments), start, table, max(e - s for _, s, e in segments))


def _lora_id(seq) -> int:
    return 0 if seq.lora_request is None else seq.lora_request.lora_int_id
