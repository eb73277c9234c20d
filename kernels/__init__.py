"""Triton kernels for block-sparse prefill attention, with plain-torch reference twins."""
