"""The OpenAI-compatible server: protocol models, serving handlers, the FastAPI app."""
