"""Model resolution (name -> local folder) and lazy weight loading."""
from pagedllm.loader.resolve import ResolvedModel, resolve_model
from pagedllm.loader.weights import iterate_weights

__all__ = ["ResolvedModel", "resolve_model", "iterate_weights"]
