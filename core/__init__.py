"""pagedllm: a vLLM-style paged-attention inference engine. The names are vLLM's."""
from pagedllm.config import EngineConfig
from pagedllm.llm import LLM
from pagedllm.lora.request import LoRARequest
from pagedllm.outputs import (CompletionOutput, EmbeddingOutput, EmbeddingRequestOutput, Logprob, PoolingOutput,
                              PoolingRequestOutput, RequestMetrics, RequestOutput)
from pagedllm.pooling import PoolerConfig, PoolingParams
from pagedllm.sampling_params import (BeamSearchParams, GuidedDecodingParams, RequestOutputKind, SamplingParams,
                                      StructuredOutputsParams)

__version__ = "0.1.0"

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "RequestMetrics",
           "RequestOutputKind", "EngineConfig", "Logprob", "BeamSearchParams", "StructuredOutputsParams",
           "GuidedDecodingParams", "PoolingParams", "PoolerConfig", "PoolingOutput", "PoolingRequestOutput",
           "EmbeddingOutput", "EmbeddingRequestOutput", "LoRARequest", "__version__"]
