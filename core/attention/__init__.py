"""Attention backends: one interface, a torch implementation (CPU, oracle) and a Triton one (GPU)."""
from pagedllm.attention.backend import AttentionBackend, AttentionMetadata, get_attention_backend

__all__ = ["AttentionBackend", "AttentionMetadata", "get_attention_backend"]
