"""Built-in plugin: the LangChain, LlamaIndex and OpenAI-client adapters (imported only when used)."""
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_adapters(register):
    register("langchain", "pagedllm.integrations.langchain", requires="langchain-core")
    register("langchain_embeddings", "pagedllm.integrations.langchain_embeddings", requires="langchain-core")
    register("llama_index", "pagedllm.integrations.llama_index", requires="llama-index-core")
    register("llama_index_embedding", "pagedllm.integrations.llama_index_embedding", requires="llama-index-core")
    register("openai", "pagedllm.integrations.openai", requires="openai")  # embeddings too, for pooling models
