"""Compute kernels: plain-torch reference twins (``reference``) and Triton kernels for the GPU.

Every Triton wrapper has the signature of its twin in ``reference``, so callers can swap them
and tests can use the twin (evaluated in float64) as the oracle. The Triton modules are not
imported here: importing them needs ``triton``, and ``triton.jit`` decides at decoration time
whether a kernel runs compiled or in the CPU interpreter (``TRITON_INTERPRET=1``).
"""
