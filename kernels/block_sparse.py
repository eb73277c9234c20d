"""Block-sparse causal attention forward (Triton), with an optional block-mass map.

Tiers: ``_attn_fwd_kernel`` / ``_block_mass_kernel`` (private ``@triton.jit``) ->
``_launch_attention`` (checks shapes, dtypes, block sizes; builds the grid) ->
``block_sparse_attention`` (public). The plain-torch twin is
``reference.block_sparse_attention_ref``.

One program handles ``BLOCK_M`` queries of one (batch, query head); query heads read their KV head
through the group index ``h // (H // H_kv)``. The grid runs heads fastest and query blocks from
the last (longest causal rows) to the first. Each program walks the kept key blocks of its layout
row in ``BLOCK_N`` tiles: first the full blocks without any mask, then the rest (diagonal, ragged)
with the end-aligned causal mask. Softmax runs in base 2 with ``scale * log2(e)`` folded into the
logits.

Block mass (``return_block_mass=True``): a second pass re-reads only the kept K blocks, recomputes
``QK^T`` and normalises it with the first pass's final row max and row sum (saved per query row),
then adds ``mean_rows(sum_cols(p))`` for each kept block into ``[B, H, nqb, nkb]`` with an atomic
add. It costs one extra ``QK^T`` over kept blocks (about half the forward's FLOPs), only for the
calls that ask for it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .layout import BlockLayout

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttnConfig:
    """Launch shape: query/key tile sizes (each divides the layout block), warps, pipeline depth."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2
    warp_specialize: bool = False  # Triton's automatic warp specialisation of the main loop


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def default_config(block_size: int, head_dim: int, on_gpu: bool) -> AttnConfig:
    """Tuned on an H200 for bf16 (see docs/benchmarks.md); whole blocks when interpreting."""
    if not on_gpu:
        return AttnConfig(block_size, block_size, 4, 1)
    if block_size == 128 and head_dim == 128:
        return AttnConfig(128, 128, 8, 3)
    if block_size == 128:
        return AttnConfig(128, 64, 4, 3)
    return AttnConfig(64, 64, 4, 3)


@triton.jit
def _attn_tile(acc, m_i, l_i, q, k_base, v_base, idx_ptr, it, offs_n, offs_d, pos_m,
               stride_kn, stride_kd, stride_vn, stride_vd, stride_ik, NK, qk_scale,
               BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               STORE_OUT: tl.constexpr):
    """One ``BLOCK_N`` key tile of the online softmax; returns the updated ``(acc, m_i, l_i)``."""
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    c = tl.load(idx_ptr + (it // SUB) * stride_ik)
    cols = c * BLOCK_SIZE + (it % SUB) * BLOCK_N + offs_n  # [BLOCK_N] absolute key index
    if MASKED:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=cols[None, :] < NK, other=0.0)  # [HEAD_DIM, BLOCK_N]
    else:
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd)
    qk = tl.dot(q, kt)  # [BLOCK_M, BLOCK_N] raw logits; scale folded into the exp2 argument
    if MASKED:
        qk = tl.where(cols[None, :] <= pos_m[:, None], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
    p = tl.math.exp2(qk * qk_scale - m_use[:, None])  # one FMA + exp2 per element
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    if STORE_OUT:
        if MASKED:
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=cols[:, None] < NK, other=0.0)  # [BLOCK_N, HEAD_DIM]
        else:
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, Stats, Counts, Indices, NumFull,
                     stride_qb, stride_qh, stride_qm, stride_qd,
                     stride_kb, stride_kh, stride_kn, stride_kd,
                     stride_vb, stride_vh, stride_vn, stride_vd,
                     stride_ob, stride_oh, stride_om, stride_od,
                     stride_cb, stride_ch, stride_ib, stride_ih, stride_ir, stride_ik,
                     H, GROUP, NQ, NK, qk_scale,
                     BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, STORE_OUT: tl.constexpr, STORE_STATS: tl.constexpr,
                     WARP_SPEC: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # last query blocks (longest rows) first
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // GROUP
    r = (pid_m * BLOCK_M) // BLOCK_SIZE
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    pos_m = offs_m + (NK - NQ)  # absolute positions of the queries
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=offs_m[:, None] < NQ, other=0.0)
    row = b * stride_cb + h * stride_ch + r
    count = tl.load(Counts + row)
    n_full = tl.load(NumFull + row)
    idx_ptr = Indices + b * stride_ib + h * stride_ih + r * stride_ir
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for it in tl.range(0, n_full * SUB, warp_specialize=WARP_SPEC):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, k_base, v_base, idx_ptr, it, offs_n, offs_d,
                                   pos_m, stride_kn, stride_kd, stride_vn, stride_vd, stride_ik,
                                   NK, qk_scale, BLOCK_SIZE, BLOCK_N, False, STORE_OUT)
    for it in range(n_full * SUB, count * SUB):
        acc, m_i, l_i = _attn_tile(acc, m_i, l_i, q, k_base, v_base, idx_ptr, it, offs_n, offs_d,
                                   pos_m, stride_kn, stride_kd, stride_vn, stride_vd, stride_ik,
                                   NK, qk_scale, BLOCK_SIZE, BLOCK_N, True, STORE_OUT)
    row_ok = offs_m < NQ
    if STORE_OUT:
        inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
        out = acc * inv_l[:, None]
        tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
                 + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_STATS:  # Stats: [B, H, 2, NQ] fp32 (row max in log2 domain, row sum)
        s_base = Stats + (pid_bh * 2) * NQ
        tl.store(s_base + offs_m, m_i, mask=row_ok)
        tl.store(s_base + NQ + offs_m, l_i, mask=row_ok)


@triton.jit
def _block_mass_kernel(Q, K, Stats, Mass, Counts, Indices,
                       stride_qb, stride_qh, stride_qm, stride_qd,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_cb, stride_ch, stride_ib, stride_ih, stride_ir, stride_ik,
                       H, GROUP, NQ, NK, NKB, qk_scale,
                       BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       HEAD_DIM: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    kvh = h // GROUP
    r = (pid_m * BLOCK_M) // BLOCK_SIZE
    SUB: tl.constexpr = BLOCK_SIZE // BLOCK_N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < NQ
    pos_m = offs_m + (NK - NQ)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    s_base = Stats + (pid_bh * 2) * NQ
    m_i = tl.load(s_base + offs_m, mask=row_ok, other=0.0)
    l_i = tl.load(s_base + NQ + offs_m, mask=row_ok, other=0.0)
    m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
    n_rows = tl.minimum(NQ - r * BLOCK_SIZE, BLOCK_SIZE).to(tl.float32)
    ok = row_ok & (l_i > 0)
    w = tl.where(ok, 1.0 / (tl.where(ok, l_i, 1.0) * n_rows), 0.0)  # [BLOCK_M] 1 / (l * rows)
    row = b * stride_cb + h * stride_ch + r
    count = tl.load(Counts + row)
    idx_ptr = Indices + b * stride_ib + h * stride_ih + r * stride_ir
    k_base = K + b * stride_kb + kvh * stride_kh
    mass_base = Mass + (pid_bh * tl.cdiv(NQ, BLOCK_SIZE) + r) * NKB
    for it in range(0, count * SUB):
        c = tl.load(idx_ptr + (it // SUB) * stride_ik)
        cols = c * BLOCK_SIZE + (it % SUB) * BLOCK_N + offs_n
        kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                     mask=cols[None, :] < NK, other=0.0)  # [HEAD_DIM, BLOCK_N]
        qk = tl.dot(q, kt) * qk_scale
        qk = tl.where(cols[None, :] <= pos_m[:, None], qk, float("-inf"))
        p = tl.math.exp2(qk - m_i[:, None])  # [BLOCK_M, BLOCK_N]
        part = tl.sum(tl.sum(p, 1) * w, 0)
        tl.atomic_add(mass_base + c, part)


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
    if dim not in (16, 32, 64, 128):
        raise ValueError(f"head dim {dim} unsupported (16, 32, 64 or 128)")
    if layout.block_size not in (16, 32, 64, 128):
        raise ValueError(f"block size {layout.block_size} unsupported (16, 32, 64 or 128)")
    if (layout.nq, layout.nk) != (nq, nk) or layout.counts.shape != (bsz, heads, layout.num_q_blocks):
        raise ValueError(f"layout {layout.shape} (nq={layout.nq}, nk={layout.nk}) does not match q/k")
    if q.device != k.device or q.device != layout.device:
        raise ValueError("q, k, v and the layout must be on one device")


def _launch_attention(q, k, v, layout: BlockLayout, scale: float, return_block_mass: bool,
                      out: torch.Tensor | None, config: AttnConfig | None, store_out: bool = True):
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
    grid = (bsz * heads, triton.cdiv(nq, cfg.block_m))
    group = heads // k.shape[1]
    qk_scale = scale * LOG2E
    lay = (layout.counts, layout.indices, layout.num_full)
    _attn_fwd_kernel[grid](
        q, k, v, kernel_out, stats, *lay,
        *q.stride(), *k.stride(), *v.stride(), *kernel_out.stride(),
        layout.counts.stride(0), layout.counts.stride(1), *layout.indices.stride(),
        heads, group, nq, k.shape[2], qk_scale,
        BLOCK_SIZE=layout.block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=dim,
        STORE_OUT=store_out, STORE_STATS=return_block_mass, WARP_SPEC=cfg.warp_specialize,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if kernel_out is not out:
        out.copy_(kernel_out)
    mass = None
    if return_block_mass:
        mass = torch.zeros((bsz, heads, layout.num_q_blocks, layout.num_kv_blocks),
                           dtype=torch.float32, device=q.device)
        _block_mass_kernel[grid](
            q, k, stats, mass, layout.counts, layout.indices,
            *q.stride(), *k.stride(),
            layout.counts.stride(0), layout.counts.stride(1), *layout.indices.stride(),
            heads, group, nq, k.shape[2], layout.num_kv_blocks, qk_scale,
            BLOCK_SIZE=layout.block_size, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM=dim,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, mass


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BlockLayout,
                           *, scale: float | None = None, return_block_mass: bool = False,
                           out: torch.Tensor | None = None, config: AttnConfig | None = None):
    """Causal attention restricted to the layout's kept blocks.

    Args:
        q: ``[B, H, Nq, D]``; k, v: ``[B, H_kv, Nk, D]`` with ``H % H_kv == 0`` and ``Nq <= Nk``
            (queries end-aligned). fp16/bf16 on GPU; fp32/fp16 (and bf16, upcast) when interpreting.
        layout: a :class:`BlockLayout` of shape ``[B, H, nqb, nkb]`` for these lengths.
        scale: logit scale, default ``1/sqrt(D)``.
        return_block_mass: also return the block-mass map ``[B, H, nqb, nkb]`` fp32 of the sparse
            softmax (rows sum to 1 over kept blocks, zero elsewhere).
        out: optional preallocated ``[B, H, Nq, D]`` output of q's dtype.
        config: optional launch shape (benchmarks and tests); default from :func:`default_config`.

    Returns:
        ``out`` ``[B, H, Nq, D]`` in q's dtype, or ``(out, mass)``. Query rows that see no key
        get zeros.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    out, mass = _launch_attention(q, k, v, layout, scale, return_block_mass, out, config)
    return (out, mass) if return_block_mass else out


def block_mass_map(q: torch.Tensor, k: torch.Tensor, layout: BlockLayout, *,
                   scale: float | None = None, config: AttnConfig | None = None) -> torch.Tensor:
    """Block-mass map ``[B, H, nqb, nkb]`` fp32 of the softmax over the layout's kept blocks.

    Runs the statistics pass without the ``P @ V`` product, then the mass pass; with a dense causal
    layout it is the exact ``block_mass_ref``. q ``[B, H, Nq, D]``, k ``[B, H_kv, Nk, D]``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    _, mass = _launch_attention(q, k, k, layout, scale, True, None, config, store_out=False)
    return mass
