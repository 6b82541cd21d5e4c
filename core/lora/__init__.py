"""LoRA adapters served next to the base model: many fine-tunes per batch (``LoRARequest`` per request).

One concept per file: ``request`` (what a caller passes), ``peft_adapter`` (reading and checking a PEFT
folder against the model), ``layers`` (the linear method that adds an adapter's delta to a layer's
output), ``punica`` (the grouped matmul over a step's adapter segments), ``manager`` (host cache and
device slots, both LRU).
"""
from pagedllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
