"""Quantized weights (issue 22): how a checkpoint's quantized tensors are held and multiplied.

Today: GGUF block types kept in their block layout (``gguf_weight``, ``gguf_linear``), loaded by
``gguf_model``. A layer's quantized weight plugs into its linear-method slot, so layers, models and
the loader's name tables stay as they are.
"""
