"""Triton kernels for block-sparse prefill attention, with plain-torch reference twins.

``import sharedattn.kernels`` stays cheap: it loads torch, the layout, the reference twins and the
backend dispatch; the Triton modules (``block_sparse``, ``estimate``, ``bench``) load on first use
of a name that lives there.
"""
from __future__ import annotations

import importlib

from .backend import (
    Backend,
    block_mass,
    dense_attention,
    last_block_profiles,
    pool_blocks_mean,
    pooled_block_estimate,
    probe_column_estimate,
    select_backend,
    set_backend,
    sparse_attention,
    use_backend,
)
from .layout import BlockLayout

_LAZY = {
    "block_sparse_attention": "block_sparse",
    "block_mass_map": "block_sparse",
    "AttnConfig": "block_sparse",
}

__all__ = [
    "Backend", "BlockLayout", "block_mass", "dense_attention", "last_block_profiles",
    "pool_blocks_mean", "pooled_block_estimate", "probe_column_estimate", "select_backend",
    "set_backend", "sparse_attention", "use_backend", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
