"""Block-sparse causal attention (Triton): public entry points and the checked launch.

Tiers: ``attn_fwd.attn_fwd_kernel`` and ``mass_pass.block_mass_kernel`` (``@triton.jit``) ->
``_launch_attention`` (checks shapes, dtypes, block sizes; builds descriptors and the grid) ->
``block_sparse_attention`` / ``block_mass_map`` (public). The plain-torch twin is
``reference.block_sparse_attention_ref``. The kernel itself is described in ``attn_fwd``; the
block-mass map (``return_block_mass=True``) in ``mass_pass``.
"""
from __future__ import annotations

import math
import os

import torch
import triton

from .attn_fwd import AttnConfig, attn_fwd_kernel, default_config, mass_config
from .device import on_input_device
from .layout import BlockLayout
from .limits import HEAD_DIMS, LOG2E, check_block_size, one_of
from .mass_pass import launch_block_mass, mass_from_tile_lse

__all__ = ["AttnConfig", "block_mass_map", "block_sparse_attention", "default_config"]



def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kv_descriptors(k: torch.Tensor, v: torch.Tensor, cfg: AttnConfig):
    """4-D TMA descriptors ``[B, H_kv, Nk, D]`` with ``[1, 1, BLOCK_N, D]`` tiles, or None where
    the tensors cannot be described (last dim not contiguous, unaligned base or strides)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    item = k.element_size()
    for t in (k, v):
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * item % 16 for s in t.stride()[:-1]):
            return None
    block = [1, 1, cfg.block_n, k.shape[-1]]
    return (TensorDescriptor(k, list(k.shape), list(k.stride()), block),
            TensorDescriptor(v, list(v.shape), list(v.stride()), block))


def _check_inputs(q, k, v, layout: BlockLayout) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q must be [B, H, Nq, D] and k, v [B, H_kv, Nk, D]")
    (bsz, heads, nq, dim), (bk, hkv, nk, dk) = q.shape, k.shape
    if v.shape != k.shape or bk != bsz or dk != dim:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if heads % hkv:
        raise ValueError(f"query heads {heads} not a multiple of KV heads {hkv}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype of fp16/bf16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if dim not in HEAD_DIMS:
        raise ValueError(f"head dim {dim} unsupported ({one_of(HEAD_DIMS)})")
    check_block_size(layout.block_size, "block size")
    if (layout.nq, layout.nk) != (nq, nk) or layout.counts.shape != (bsz, heads, layout.num_q_blocks):
        raise ValueError(f"layout {layout.shape} (nq={layout.nq}, nk={layout.nk}) does not match q/k")
    if q.device != k.device or q.device != layout.device:
        raise ValueError("q, k, v and the layout must be on one device")


def check_mass_heads(mass_heads, q) -> None:
    """``ValueError`` unless ``mass_heads`` is None or ``[B, H]`` of q."""
    if mass_heads is not None and tuple(mass_heads.shape) != tuple(q.shape[:2]):
        raise ValueError(f"mass_heads must be [B, H] = {tuple(q.shape[:2])}, got {tuple(mass_heads.shape)}")


def _one_pass_slots(layout: BlockLayout, cfg: AttnConfig, mass_heads, mode: str, device,
                    num_mass_heads: int | None = None):
    """``(slots, ids)``: each head's slot in the one-pass scratch (``[B * H]`` int32, -1 = no map)
    and the flat ids of the mapped heads in slot order, or None for two passes.

    The one-pass scratch is ``slots x kept tiles x rows`` fp32; "auto" takes it when it fits in
    an eighth of the free device memory (512 MiB on CPU) and a kept block is one key tile (with
    sub-tiles the two-pass map is faster: docs/benchmarks.md). ``num_mass_heads``: the number of
    True entries of ``mass_heads`` when the caller knows it (no host sync here then)."""
    if mode == "two":
        return None
    bsz, heads = layout.counts.shape[:2]
    if mode == "auto" and cfg.block_n != layout.block_size:
        return None
    wanted = torch.ones(bsz, heads, dtype=torch.bool, device=device) if mass_heads is None else mass_heads
    wanted = wanted.to(device).reshape(-1)
    n = wanted.numel() if mass_heads is None else num_mass_heads
    if n is None:
        n = int(wanted.sum())  # one host sync
    need = n * layout.indices.shape[-1] * (layout.block_size // cfg.block_n) \
        * layout.num_q_blocks * layout.block_size * 4
    if mode == "auto":
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 4 << 30
        if need > free // 8:
            return None
    slots = torch.where(wanted, torch.cumsum(wanted, 0, dtype=torch.int32) - 1, -1).to(torch.int32)
    return slots, torch.nonzero_static(wanted, size=n).flatten()


def _launch_attention(q, k, v, layout: BlockLayout, scale: float, return_block_mass: bool,
                      out: torch.Tensor | None, config: AttnConfig | None, store_out: bool = True,
                      mass_heads: torch.Tensor | None = None, mass_pass: str = "auto",
                      num_mass_heads: int | None = None):
    """Checked launch. q ``[B, H, Nq, D]``, k/v ``[B, H_kv, Nk, D]`` -> (out, mass or None)."""
    _check_inputs(q, k, v, layout)
    orig_dtype = q.dtype
    if _interpreting() and q.dtype == torch.bfloat16:  # bf16 tl.dot is wrong in the interpreter
        q, k, v = q.float(), k.float(), v.float()
    bsz, heads, nq, dim = q.shape
    cfg = config or default_config(layout.block_size, dim, q.is_cuda)
    if layout.block_size % cfg.block_m or layout.block_size % cfg.block_n:
        raise ValueError(f"tiles {cfg} must divide the block size {layout.block_size}")
    if not store_out:  # statistics only: O is never written, q stands in for its pointer
        out = kernel_out = q
    elif out is None:
        out = torch.empty(q.shape, dtype=orig_dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != orig_dtype:
        raise ValueError(f"out must be {tuple(q.shape)} {orig_dtype}")
    if store_out:
        kernel_out = out if out.dtype == q.dtype else torch.empty_like(q)
    stats = torch.empty((bsz, heads, 2, nq), dtype=torch.float32, device=q.device)
    one_pass = _one_pass_slots(layout, cfg, mass_heads, mass_pass, q.device, num_mass_heads) \
        if return_block_mass else None
    sub = layout.block_size // cfg.block_n
    kt, nqp = layout.indices.shape[-1] * sub, layout.num_q_blocks * layout.block_size
    slots = lse = stats  # placeholders when no tile sums are recorded
    if one_pass is not None:
        slots, ids = one_pass
        lse = torch.empty((max(ids.numel(), 1), kt, nqp), dtype=torch.float32, device=q.device)
    descs = _kv_descriptors(k, v, cfg) if cfg.tma else None
    num_m = triton.cdiv(nq, cfg.block_m)
    qk_scale = scale * LOG2E
    attn_fwd_kernel[(bsz * heads * num_m,)](
        q, k, v, kernel_out, stats, layout.counts, layout.indices, layout.num_full,
        *(descs or (k, v)), lse, slots,
        *q.stride(), *k.stride(), *v.stride(), *kernel_out.stride(),
        layout.counts.stride(0), layout.counts.stride(1), *layout.indices.stride(),
        heads, heads // k.shape[1], nq, k.shape[2], num_m, nqp, kt, qk_scale,
        BLOCK_SIZE=layout.block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=dim,
        STORE_OUT=store_out, STORE_STATS=return_block_mass, WARP_SPEC=cfg.warp_specialize,
        USE_TMA=descs is not None, ORDER_KV=cfg.order == "kv", TILE_LSE=one_pass is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if store_out and kernel_out is not out:
        out.copy_(kernel_out)
    mass = None
    if one_pass is not None:
        mass = mass_from_tile_lse(lse, stats, layout, one_pass[1], sub)
    elif return_block_mass:
        mass = launch_block_mass(q, k, stats, layout, qk_scale,
                                 config or mass_config(layout.block_size, dim, q.is_cuda), mass_heads)
    return out, mass


@on_input_device
def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout,
                           *, scale: float | None = None, return_block_mass: bool = False,
                           out: torch.Tensor | None = None, config: AttnConfig | None = None,
                           mass_heads: torch.Tensor | None = None, mass_pass: str = "auto",
                           num_mass_heads: int | None = None):
    """Causal attention restricted to the layout's kept blocks.

    Args:
        q: ``[B, H, Nq, D]``; k, v: ``[B, H_kv, Nk, D]`` with ``H % H_kv == 0`` and ``Nq <= Nk``
            (queries end-aligned). fp16/bf16 on GPU; fp32/fp16 (and bf16, upcast) when interpreting.
        layout: a :class:`BlockLayout` of shape ``[B, H, nqb, nkb]`` for these lengths.
        scale: logit scale, default ``1/sqrt(D)``.
        return_block_mass: also return the block-mass map ``[B, H, nqb, nkb]`` fp32 of the sparse
            softmax (rows sum to 1 over kept blocks, zero elsewhere).
        out: optional preallocated ``[B, H, Nq, D]`` output of q's dtype.
        mass_heads: optional bool ``[B, H]``: with ``return_block_mass``, only these heads' maps
            are computed (the others are zero and cost nothing), e.g. SharePrefill's pivotals.
        mass_pass: how the map is made. ``"one"``: the forward pass records each kept tile's
            row sums (a scratch of ``mapped heads x kept tiles x rows`` fp32) and a few torch ops
            turn them into the map, with no second pass over K. ``"two"``: a second kernel
            re-reads the kept K blocks (no scratch). ``"auto"``: one pass when the scratch
            fits in an eighth of the free device memory and each kept block is one key tile.
        num_mass_heads: the number of True entries of ``mass_heads``, when known, which saves
            the one host sync that sizes the one-pass scratch.
        config: optional launch shape (benchmarks and tests); default from :func:`default_config`.

    Returns:
        ``out`` ``[B, H, Nq, D]`` in q's dtype, or ``(out, mass)``. Query rows that see no key
        get zeros.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    check_mass_heads(mass_heads, q)
    if mass_pass not in ("auto", "one", "two"):
        raise ValueError(f"mass_pass must be auto, one or two, got {mass_pass!r}")
    out, mass = _launch_attention(q, k, v, layout, scale, return_block_mass, out, config,
                                  mass_heads=mass_heads, mass_pass=mass_pass, num_mass_heads=num_mass_heads)
    return (out, mass) if return_block_mass else out


@on_input_device
def block_mass_map(q: torch.Tensor, k: torch.Tensor, layout: BlockLayout, *,
                   scale: float | None = None, config: AttnConfig | None = None) -> torch.Tensor:
    """Block-mass map ``[B, H, nqb, nkb]`` fp32 of the softmax over the layout's kept blocks.

    Runs the statistics pass without the ``P @ V`` product, then the mass pass; with a dense causal
    layout it is the exact ``block_mass_ref``. q ``[B, H, Nq, D]``, k ``[B, H_kv, Nk, D]``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    _, mass = _launch_attention(q, k, k, layout, scale, True, None, config, store_out=False)
    return mass
