"""Triton kernels for block-sparse prefill attention, with plain-torch reference twins.

``import sharedattn.kernels`` is free: every public name loads its module on first use, so
``sharedattn.kernels.limits`` (what the kernels can run; no torch) can be read by the CLI's help.
The backend dispatch, the layout and the twins load torch; the Triton modules (``block_sparse``,
``estimate``, ``bench``) load triton.
"""
from __future__ import annotations

import importlib

_BACKEND_NAMES = ("Backend", "Geometry", "assemble_layout", "attention_backend", "block_mass", "count_call",
                  "coverage_rows", "dense_attention", "flash_unavailable", "head_decisions",
                  "last_block_pooled_profiles", "last_block_profiles", "pool_blocks_mean", "pooled_block_estimate",
                  "pooled_estimate_of_means", "probe_column_estimate", "record_backends", "record_pivotals",
                  "require_flash", "select_backend", "set_backend", "sparse_attention", "uncounted", "use_backend")
_LAZY = {
    **{name: "backend" for name in _BACKEND_NAMES},
    "BlockLayout": "layout",
    "BLOCK_SIZES": "limits",
    "ConfigError": "limits",
    "block_sparse_attention": "block_sparse",
    "block_mass_map": "block_sparse",
    "AttnConfig": "block_sparse",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
