"""Pooling models: a model's hidden states reduced to one vector per input (embeddings).

``params``: what a request asks for (``PoolingParams``); ``config``: how a model pools
(``PoolerConfig``, read from a sentence-transformers folder or the architecture's default);
``pooler``: the reduction itself (MEAN / CLS / LAST, Matryoshka truncation, normalisation).
"""
from pagedllm.pooling.config import POOLING_TYPES, RUNNERS, PoolerConfig
from pagedllm.pooling.params import PoolingParams

__all__ = ["POOLING_TYPES", "RUNNERS", "PoolerConfig", "PoolingParams"]
