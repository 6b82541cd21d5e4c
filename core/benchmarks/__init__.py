"""Benchmarks shipped in the package (``pagedllm bench ...``), measured against named peers in one run."""
