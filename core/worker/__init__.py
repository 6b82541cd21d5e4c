"""The worker: model runner (batch building + forward), KV cache allocation, sampler."""
