"""Built-in plugin: the torch attention backend (oracle), the CPU one (torch + C decode kernel)
and the Triton one (GPU)."""
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_attention_backends(register):
    from pagedllm.attention.cpu_backend import CpuAttentionBackend
    from pagedllm.attention.torch_backend import TorchAttentionBackend

    register("torch", TorchAttentionBackend)
    register("cpu", CpuAttentionBackend)
    try:
        from pagedllm.attention.triton_backend import TritonAttentionBackend
    except ImportError:  # triton not installed (e.g. a CPU-only install)
        return
    register("triton", TritonAttentionBackend)
