"""vLLM-style layers shared by the model families."""
