"""Native model implementations, chosen by the HF config's ``architectures``."""
from pagedllm.models.registry import get_model_class, supported_architectures

__all__ = ["get_model_class", "supported_architectures"]
