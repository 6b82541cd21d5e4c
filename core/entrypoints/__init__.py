"""Ways into the engine from outside Python code: the ``pagedllm`` CLI (and the server)."""
