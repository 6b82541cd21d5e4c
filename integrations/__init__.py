"""Framework adapters over ``pagedllm.provider``: LangChain, LlamaIndex, the OpenAI client."""
