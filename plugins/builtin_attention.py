"""Built-in plugin: the torch attention backend (CPU, oracle) and the Triton one (GPU)."""
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_attention_backends(register):
    from pagedllm.attention.torch_backend import TorchAttentionBackend

    register("torch", TorchAttentionBackend)
    try:
        from pagedllm.attention.triton_backend import TritonAttentionBackend
    except ImportError:  # triton not installed (e.g. a CPU-only install)
        return
    register("triton", TritonAttentionBackend)
