"""LangChain adapters: ``VLLM`` (an LLM), ``ChatVLLM`` (a chat model) and ``VLLMEmbeddings`` over a
pagedllm Provider.

One module per LangChain base class (``langchain_llm``, ``langchain_chat``, ``langchain_embeddings``),
as langchain-ollama; this one keeps ``from pagedllm.integrations.langchain import VLLM, ChatVLLM``
working and is the module the built-in ``langchain`` adapter plugin names.
"""
from pagedllm.integrations.langchain_chat import ChatVLLM
from pagedllm.integrations.langchain_embeddings import VLLMEmbeddings
from pagedllm.integrations.langchain_llm import VLLM

__all__ = ["VLLM", "ChatVLLM", "VLLMEmbeddings"]
