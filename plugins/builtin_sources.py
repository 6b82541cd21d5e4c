"""Built-in model sources, tried in this order: local path, bundled package, HF hub, ModelScope."""
from pagedllm.loader.sources import (
    BundledPackageSource,
    HuggingFaceHubSource,
    LocalPathSource,
    ModelScopeSource,
)
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_model_sources(register):
    register(LocalPathSource())
    register(BundledPackageSource())
    register(HuggingFaceHubSource())
    register(ModelScopeSource())
