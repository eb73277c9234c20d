"""One place that chooses Triton or the plain-torch reference twin, and the dispatching functions.

Rule (``select_backend``): an explicit override wins (``set_backend`` / ``use_backend``, or the
environment variable ``SHAREDATTN_KERNEL_BACKEND=triton|reference`` read at call time); otherwise
CUDA tensors use Triton and CPU tensors the reference twin. Interpreted Triton on CPU
(``TRITON_INTERPRET=1``) is for kernel tests, which ask for it explicitly (``use_backend``); the
analysis code on CPU always gets the fast torch twin, even inside a test session that interprets. Triton modules
are imported lazily, so importing this module never imports triton.

Every dispatching function returns the same shapes and dtypes on both backends: attention output
in q's dtype, maps and profiles in fp32.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from enum import Enum
from typing import Iterator

import torch

from . import reference as ref
from .layout import BlockLayout
from .limits import DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE

ENV_VAR = "SHAREDATTN_KERNEL_BACKEND"


class Backend(str, Enum):
    TRITON = "triton"
    REFERENCE = "reference"


_override: Backend | None = None


def set_backend(backend: Backend | str | None) -> None:
    """Force a backend for every later call (``None`` restores the automatic rule)."""
    global _override
    _override = None if backend is None else Backend(backend)


@contextmanager
def use_backend(backend: Backend | str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (tests)."""
    global _override
    saved = _override
    _override = Backend(backend)
    try:
        yield
    finally:
        _override = saved


def select_backend(t: torch.Tensor) -> Backend:
    """The backend for a call whose inputs live where ``t`` lives (see the module docstring)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    if env:
        return Backend(env)
    if t.is_cuda:
        return Backend.TRITON
    return Backend.REFERENCE


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout, *,
                     scale: float | None = None, return_block_mass: bool = False,
                     mass_heads: torch.Tensor | None = None, num_mass_heads: int | None = None):
    """Block-sparse causal attention: q ``[B, H, Nq, D]``, k/v ``[B, H_kv, Nk, D]`` -> out
    ``[B, H, Nq, D]`` (q's dtype), plus the mass map ``[B, H, nqb, nkb]`` fp32 when asked
    (only for the heads of the bool ``[B, H]`` ``mass_heads`` if given; zeros elsewhere;
    ``num_mass_heads``: how many those are, when the caller knows, which saves a host sync)."""
    if select_backend(q) is Backend.TRITON:
        from .block_sparse import block_sparse_attention

        return block_sparse_attention(q, k, v, layout, scale=scale, return_block_mass=return_block_mass,
                                      mass_heads=mass_heads, num_mass_heads=num_mass_heads)
    if not return_block_mass:
        return _masked_sdpa(q, k, v, layout, scale)
    if mass_heads is None:
        res = ref.block_sparse_attention_ref(q, k, v, layout.to_dense(), layout.block_size, scale, True)
        return res[0].to(q.dtype), res[1]
    return _masked_sdpa(q, k, v, layout, scale), _mass_of_heads(q, k, v, layout, scale, mass_heads)


def _mass_of_heads(q, k, v, layout: BlockLayout, scale, mass_heads: torch.Tensor) -> torch.Tensor:
    """Reference mass maps for the selected heads only (the others stay zero)."""
    mass = torch.zeros(layout.shape, dtype=torch.float32, device=q.device)
    bi, hi = torch.nonzero(mass_heads.to(q.device), as_tuple=True)
    if bi.numel():
        group = q.shape[1] // k.shape[1]
        sel = lambda t, heads: t[bi, heads][None]  # noqa: E731  [1, n, ...]
        _, m = ref.block_sparse_attention_ref(sel(q, hi), sel(k, hi // group), sel(v, hi // group),
                                              sel(layout.to_dense(), hi), layout.block_size, scale, True)
        mass[bi, hi] = m[0]
    return mass


def _masked_sdpa(q, k, v, layout: BlockLayout, scale: float | None) -> torch.Tensor:
    """Reference path without the mass map: torch's fused SDPA with the block mask expanded to
    tokens (same maths as the twin, several times faster on CPU). Rows with nothing kept give 0."""
    keep = ref.block_mask_to_token_mask(layout.to_dense(), layout.nq, layout.nk, layout.block_size)
    keep = keep & ref.causal_token_mask(layout.nq, layout.nk, q.device)  # [B, H, Nq, Nk]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=keep, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return torch.nan_to_num(out, nan=0.0)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE, *,
                    scale: float | None = None, return_block_mass: bool = False):
    """Dense causal attention through the same kernel (a full layout); same returns as above."""
    layout = BlockLayout.dense_causal(q.shape[0], q.shape[1], q.shape[2], k.shape[2], block_size,
                                      q.device)
    return sparse_attention(q, k, v, layout, scale=scale, return_block_mass=return_block_mass)


def block_mass(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float | None = None,
               chunk_size: int = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Exact dense causal block-mass map ``[B, H, nqb, nkb]`` fp32 (rows sum to 1).

    ``chunk_size`` bounds the reference twin's extra memory (query rows at once); Triton
    streams over keys and needs no chunking."""
    if select_backend(q) is Backend.TRITON:
        from .block_sparse import block_mass_map

        layout = BlockLayout.dense_causal(q.shape[0], q.shape[1], q.shape[2], k.shape[2],
                                          block_size, q.device)
        return block_mass_map(q, k, layout, scale=scale)
    return ref.block_mass_ref(q, k, block_size, scale, chunk_size)


def last_block_profiles(q: torch.Tensor, k: torch.Tensor, block_size: int,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe ``(vertical, slash)`` profiles, each ``[B, H, Nk]`` fp32."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import last_block_profiles as fn

        return fn(q, k, block_size, scale)
    return ref.last_block_profiles_ref(q, k, block_size, scale)


def pool_blocks_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block means ``[B, H, N, D]`` -> ``[B, H, nb, D]`` fp32."""
    if select_backend(x) is Backend.TRITON:
        from .estimate import pool_blocks_mean as fn

        return fn(x, block_size)
    return ref.pool_blocks_mean_ref(x, block_size)


def pooled_block_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Pooled causal block-level estimate ``[B, H, nqb, nkb]`` fp32 (query-aware heads)."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import pooled_block_estimate as fn

        return fn(q, k, block_size, scale)
    return ref.pooled_block_estimate_ref(q, k, block_size, scale)


def probe_column_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Pooled estimate of the probe's column distribution ``[B, H, nkb]`` fp32."""
    if select_backend(q) is Backend.TRITON:
        from .estimate import probe_column_estimate as fn

        return fn(q, k, block_size, scale)
    return ref.probe_column_estimate_ref(q, k, block_size, scale)


def assemble_layout(v_rank: torch.Tensor, s_rank: torch.Tensor, v_count: torch.Tensor, s_count: torch.Tensor,
                    nq: int, nk: int, block_size: int, *, minimal=None, query_aware=None, share=None,
                    tail_first: int | None = None, want_own: bool = False):
    """One layer's block mask, its own vertical-slash mask (``want_own``) and layout draft from
    ranks and counts (arguments: ``reference.assemble_masks_ref``): ``(mask, own or None, draft)``.
    One Triton launch on the Triton backend (``decide.assemble_kernel``), the twins elsewhere."""
    from .layout import BlockLayout, LayoutDraft

    if select_backend(v_rank) is Backend.TRITON:
        from .decide import assemble_triton

        mask, own, counts, ordered, num_full = assemble_triton(
            v_rank, s_rank, v_count, s_count, nq, nk, block_size, minimal=minimal, query_aware=query_aware,
            share=share, tail_first=tail_first, want_own=want_own)
        return mask, own, LayoutDraft(counts, ordered, num_full, block_size, nq, nk)
    mask, own = ref.assemble_masks_ref(v_rank, s_rank, v_count, s_count, nq, nk, block_size, minimal=minimal,
                                       query_aware=query_aware, share=share, tail_first=tail_first)
    return mask, (own if want_own else None), BlockLayout.draft(mask, block_size, nq, nk)
