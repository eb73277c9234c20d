"""Pattern-estimation kernels (Triton): probe profiles, block-mean pooling, pooled estimates.

Public functions and their twins in ``reference.py``:

* ``last_block_profiles(q, k, block_size, scale)`` -> ``(vertical, slash)`` ``[B, H, Nk]`` each
  (twin ``last_block_profiles_ref``). Three launches: split-key row statistics of the probe
  (combined in torch), then normalised probabilities written to an fp32 workspace
  ``[B, H, m, Nk]`` together with their column means (vertical), then the diagonal sums (slash)
  read back from the workspace along each offset. The workspace is ``4 * B * H * m * Nk`` bytes
  (2 GiB for 32 heads at 128K, m = 128).
* ``pool_blocks_mean(x, block_size)`` -> ``[B, H, nb, D]`` fp32 (twin ``pool_blocks_mean_ref``).
* ``pooled_block_estimate(q, k, block_size, scale)`` -> ``[B, H, nqb, nkb]`` (twin
  ``pooled_block_estimate_ref``).
* ``probe_column_estimate(q, k, block_size, scale)`` -> ``[B, H, nkb]`` (twin
  ``probe_column_estimate_ref``).

Shapes follow ``reference.py``: q ``[B, H, Nq, D]``, k ``[B, H_kv, Nk, D]``, end-aligned causality,
the probe is the last ``m = min(B, Nq)`` queries. All outputs are fp32.
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .device import on_input_device
from .limits import LOG2E
from .reference import num_blocks


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dot_operand(x: torch.Tensor) -> torch.Tensor:
    """bf16 ``tl.dot`` is wrong under the interpreter: upcast there."""
    return x.float() if (_interpreting() and x.dtype == torch.bfloat16) else x


@triton.jit
def _pool_kernel(X, Out, stride_xb, stride_xh, stride_xn, stride_xd, N, ROWS, NB, H,
                 BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr):
    pid_bh = tl.program_id(0)
    blk = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_r = blk * ROWS + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (tl.arange(0, BLOCK_R) < ROWS) & (offs_r < N)
    x = tl.load(X + b * stride_xb + h * stride_xh + offs_r[:, None] * stride_xn
                + offs_d[None, :] * stride_xd, mask=ok[:, None], other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / tl.sum(ok.to(tl.float32), 0)  # [HEAD_DIM]
    tl.store(Out + (pid_bh * NB + blk) * HEAD_DIM + offs_d, mean)


@on_input_device
def pool_blocks_mean(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block means over dim 2: ``[B, H, N, D]`` -> ``[B, H, nb, D]`` fp32 (ragged last block:
    the mean of the rows it holds). Any block size >= 1; D a power of two."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, H, N, D], got {tuple(x.shape)}")
    bsz, heads, n, dim = x.shape
    if dim & (dim - 1):
        raise ValueError(f"head dim {dim} must be a power of two")
    nb = num_blocks(n, block_size)
    out = torch.empty((bsz, heads, nb, dim), dtype=torch.float32, device=x.device)
    _pool_kernel[(bsz * heads, nb)](x, out, *x.stride(), n, block_size, nb, heads,
                                    BLOCK_R=triton.next_power_of_2(block_size), HEAD_DIM=dim)
    return out


@triton.jit
def _pooled_softmax_kernel(QP, KP, Lim, Out, stride_kb, stride_kh, H, GROUP, R, C, qk_scale,
                           BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Row softmax of ``QP @ KP^T`` over key blocks ``c <= Lim[r]``; QP ``[B, H, R, D]`` and
    Out ``[B, H, R, C]`` contiguous fp32, KP ``[B, H_kv, C, D]`` fp32 (contiguous rows)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    kvh = (pid_bh % H) // GROUP
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    r_ok = offs_r < R
    qp = tl.load(QP + (pid_bh * R + offs_r[:, None]) * HEAD_DIM + offs_d[None, :],
                 mask=r_ok[:, None], other=0.0)
    lim = tl.load(Lim + offs_r, mask=r_ok, other=-1)
    kp_base = KP + b * stride_kb + kvh * stride_kh
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        logits = _pooled_logits(qp, kp_base, c0, lim, C, qk_scale, BLOCK_C, HEAD_DIM)
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_use) + tl.sum(tl.math.exp2(logits - m_use[:, None]), 1)
        m_i = m_new
    m_use = tl.where(m_i == float("-inf"), 0.0, m_i)
    inv_l = tl.where(l_i > 0, 1.0 / tl.where(l_i > 0, l_i, 1.0), 0.0)
    for c0 in range(0, C, BLOCK_C):
        logits = _pooled_logits(qp, kp_base, c0, lim, C, qk_scale, BLOCK_C, HEAD_DIM)
        p = tl.math.exp2(logits - m_use[:, None]) * inv_l[:, None]
        offs_c = c0 + tl.arange(0, BLOCK_C)
        tl.store(Out + (pid_bh * R + offs_r[:, None]) * C + offs_c[None, :], p,
                 mask=r_ok[:, None] & (offs_c[None, :] < C))


@triton.jit
def _pooled_logits(qp, kp_base, c0, lim, C, qk_scale, BLOCK_C: tl.constexpr, HEAD_DIM: tl.constexpr):
    offs_c = c0 + tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, HEAD_DIM)
    kpt = tl.load(kp_base + offs_c[None, :] * HEAD_DIM + offs_d[:, None],
                  mask=offs_c[None, :] < C, other=0.0)  # [HEAD_DIM, BLOCK_C]
    logits = tl.dot(qp, kpt, input_precision="tf32x3") * qk_scale  # [BLOCK_R, BLOCK_C]
    return tl.where(offs_c[None, :] <= lim[:, None], logits, float("-inf"))


@on_input_device
def _pooled_softmax(qp: torch.Tensor, kp: torch.Tensor, lim: torch.Tensor, scale: float) -> torch.Tensor:
    """qp ``[B, H, R, D]``, kp ``[B, H_kv, C, D]`` fp32, lim ``[R]`` int32 -> ``[B, H, R, C]``."""
    bsz, heads, rows, dim = qp.shape
    cols = kp.shape[2]
    out = torch.empty((bsz, heads, rows, cols), dtype=torch.float32, device=qp.device)
    block_r, block_c = 32, 64
    grid = (bsz * heads, triton.cdiv(rows, block_r))
    kp = kp.contiguous()
    _pooled_softmax_kernel[grid](qp.contiguous(), kp, lim, out, kp.stride(0),
                                 kp.stride(1), heads,
                                 heads // kp.shape[1], rows, cols, scale * LOG2E,
                                 BLOCK_R=block_r, BLOCK_C=block_c, HEAD_DIM=dim)
    return out


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q must be [B, H, Nq, D] and k [B, H_kv, Nk, D]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] or q.shape[2] > k.shape[2]:
        raise ValueError(f"need H % H_kv == 0 and Nq <= Nk; got {tuple(q.shape)}, {tuple(k.shape)}")


def pooled_block_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Pooled block-level causal attention estimate ``[B, H, nqb, nkb]`` fp32 (rows sum to 1)."""
    _check_qk(q, k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return pooled_estimate_of_means(pool_blocks_mean(q, block_size), k, q.shape[2], block_size, scale)


def pooled_estimate_of_means(q_means: torch.Tensor, k: torch.Tensor, nq: int, block_size: int,
                             scale: float | None = None) -> torch.Tensor:
    """``pooled_block_estimate`` from the block means ``[B, H, nqb, D]`` fp32 of ``nq`` queries
    (``pool_blocks_mean``): what a recorded decision step reads instead of every query."""
    nk = k.shape[2]
    if q_means.shape[2] != triton.cdiv(nq, block_size) or nq > nk or q_means.shape[1] % k.shape[1]:
        raise ValueError(f"query means {tuple(q_means.shape)} of {nq} queries do not fit keys {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q_means.shape[-1]) if scale is None else float(scale)
    kp = pool_blocks_mean(k, block_size)  # [B, H_kv, nkb, D]
    rows = torch.arange(q_means.shape[2], device=k.device)
    last_pos = torch.clamp((rows + 1) * block_size, max=nq) - 1 + (nk - nq)
    lim = (last_pos // block_size).to(torch.int32)  # [nqb] last causal-valid key block
    return _pooled_softmax(q_means, kp, lim, scale)


def probe_column_estimate(q: torch.Tensor, k: torch.Tensor, block_size: int,
                          scale: float | None = None) -> torch.Tensor:
    """Mean probe query against block-mean keys, softmax over all key blocks: ``[B, H, nkb]``."""
    _check_qk(q, k)
    nq = q.shape[2]
    m = min(block_size, nq)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    qm = pool_blocks_mean(q[:, :, nq - m:], m)  # [B, H, 1, D]
    kp = pool_blocks_mean(k, block_size)  # [B, H_kv, nkb, D]
    lim = torch.full((1,), kp.shape[2] - 1, dtype=torch.int32, device=q.device)
    return _pooled_softmax(qm, kp, lim, scale)[:, :, 0]


@triton.jit
def _probe_logits(q, k_base, n0, pos, NK, stride_kn, stride_kd, qk_scale,
                  BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Masked log2-domain logits ``[BLOCK_M, BLOCK_N]`` of the probe against keys ``n0 + [0, BLOCK_N)``."""
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                 mask=cols[None, :] < NK, other=0.0)  # [HEAD_DIM, BLOCK_N]
    qk = tl.dot(q, kt) * qk_scale
    return tl.where((cols[None, :] <= pos[:, None]) & (cols[None, :] < NK), qk, float("-inf"))


@triton.jit
def _load_probe(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, NQ, M,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr):
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    return tl.load(Q + b * stride_qb + h * stride_qh + (NQ - M + rows)[:, None] * stride_qm
                   + offs_d[None, :] * stride_qd, mask=rows[:, None] < M, other=0.0)


@triton.jit
def _probe_stats_kernel(Q, K, Part, stride_qb, stride_qh, stride_qm, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd,
                        H, GROUP, NQ, NK, M, TILES_PER_SPLIT, qk_scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Partial row max / row sum of the probe over one split of the keys -> Part ``[BH, S, 2, BLOCK_M]``."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q = _load_probe(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, NQ, M, BLOCK_M, HEAD_DIM)
    pos = NK - M + tl.arange(0, BLOCK_M)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    t_end = tl.minimum((split + 1) * TILES_PER_SPLIT, tl.cdiv(NK, BLOCK_N))
    for t in range(split * TILES_PER_SPLIT, t_end):
        qk = _probe_logits(q, k_base, t * BLOCK_N, pos, NK, stride_kn, stride_kd, qk_scale,
                           BLOCK_N, HEAD_DIM)
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.math.exp2(m_i - m_use) + tl.sum(tl.math.exp2(qk - m_use[:, None]), 1)
        m_i = m_new
    base = Part + (pid_bh * tl.num_programs(1) + split) * 2 * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(base, m_i)
    tl.store(base + BLOCK_M, l_i)


@triton.jit
def _probe_tile_probs(Q, K, RowStat, pid_bh, n0, stride_qb, stride_qh, stride_qm, stride_qd,
                      stride_kb, stride_kh, stride_kn, stride_kd, H, GROUP, NQ, NK, M, qk_scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """``(rows, p)``: the probe's normalised probabilities ``[BLOCK_M, BLOCK_N]`` on keys
    ``n0 + [0, BLOCK_N)`` from the row statistics ``RowStat`` ``[BH, 2, BLOCK_M]`` (0 where masked)."""
    b = pid_bh // H
    h = pid_bh % H
    rows = tl.arange(0, BLOCK_M)
    q = _load_probe(Q, b, h, stride_qb, stride_qh, stride_qm, stride_qd, NQ, M, BLOCK_M, HEAD_DIM)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    m_i = tl.load(RowStat + pid_bh * 2 * BLOCK_M + rows)
    l_i = tl.load(RowStat + pid_bh * 2 * BLOCK_M + BLOCK_M + rows)
    ok = (rows < M) & (l_i > 0)
    inv_l = tl.where(ok, 1.0 / tl.where(ok, l_i, 1.0), 0.0)
    m_use = tl.where(m_i == float("-inf"), 0.0, m_i)
    qk = _probe_logits(q, k_base, n0, NK - M + rows, NK, stride_kn, stride_kd, qk_scale, BLOCK_N, HEAD_DIM)
    return rows, tl.math.exp2(qk - m_use[:, None]) * inv_l[:, None]


@triton.jit
def _probe_probs_kernel(Q, K, RowStat, Work, Vert, stride_qb, stride_qh, stride_qm, stride_qd,
                        stride_kb, stride_kh, stride_kn, stride_kd, H, GROUP, NQ, NK, M, qk_scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Normalised probe probabilities of one key tile -> Work ``[BH, M, NK]``; their column mean
    -> Vert ``[BH, NK]``."""
    pid_bh = tl.program_id(0)
    n0 = tl.program_id(1) * BLOCK_N
    rows, p = _probe_tile_probs(Q, K, RowStat, pid_bh, n0, stride_qb, stride_qh, stride_qm, stride_qd,
                                stride_kb, stride_kh, stride_kn, stride_kd, H, GROUP, NQ, NK, M, qk_scale,
                                BLOCK_M, BLOCK_N, HEAD_DIM)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(Work + (pid_bh * M + rows[:, None]) * NK + cols[None, :], p,
             mask=(rows[:, None] < M) & (cols[None, :] < NK))
    tl.store(Vert + pid_bh * NK + cols, tl.sum(p, 0) / M, mask=cols < NK)


@triton.jit
def _slash_kernel(Work, Slash, NK, M, BLOCK_N: tl.constexpr):
    """slash[o] = mean_i Work[i, NK - M + i - o] for one tile of offsets o -> Slash ``[BH, NK]``."""
    pid_bh = tl.program_id(0)
    offs_o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    base = Work + pid_bh * M * NK
    for i in range(0, M):
        j = NK - M + i - offs_o
        acc += tl.load(base + i * NK + j, mask=(j >= 0) & (offs_o < NK), other=0.0)
    tl.store(Slash + pid_bh * NK + offs_o, acc / M, mask=offs_o < NK)


def _combine_partial_stats(part: torch.Tensor) -> torch.Tensor:
    """Part ``[BH, S, 2, BM]`` (row max, row sum per split) -> ``[BH, 2, BM]`` for all keys."""
    m_s, l_s = part[:, :, 0], part[:, :, 1]  # [BH, S, BM]
    m = m_s.amax(dim=1)  # [BH, BM]
    m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    l = (l_s * torch.exp2(m_s - m_safe[:, None])).sum(dim=1)
    return torch.stack([m, l], dim=1).contiguous()


class _Probe(NamedTuple):
    rowstat: torch.Tensor  # [BH, 2, BLOCK_M]: each probe row's max (log2 domain) and sum over all keys
    m: int  # probe rows
    tiles: int  # key tiles of BLOCK_N
    common: tuple  # strides and sizes every probe kernel takes
    meta: dict  # BLOCK_M, BLOCK_N, HEAD_DIM
    qk_scale: float


def _probe_stats(q: torch.Tensor, k: torch.Tensor, block_size: int, scale: float | None, block_n: int):
    """Checked operands and the probe's row statistics over every key (split-key launch, combined in
    torch): what both probe reductions start from. Returns ``(q, k, _Probe)``."""
    _check_qk(q, k)
    q, k = _dot_operand(q), _dot_operand(k)
    bsz, heads, nq, dim = q.shape
    nk = k.shape[2]
    m = min(block_size, nq)
    qk_scale = (1.0 / math.sqrt(dim) if scale is None else float(scale)) * LOG2E
    meta = dict(BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N=block_n, HEAD_DIM=dim)
    tiles = triton.cdiv(nk, block_n)
    splits = min(tiles, max(1, 512 // (bsz * heads))) if q.is_cuda else 1
    per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_split)
    common = (*q.stride(), *k.stride(), heads, heads // k.shape[1], nq, nk, m)
    part = torch.empty((bsz * heads, splits, 2, meta["BLOCK_M"]), dtype=torch.float32, device=q.device)
    _probe_stats_kernel[(bsz * heads, splits)](q, k, part, *common, per_split, qk_scale, **meta)
    return q, k, _Probe(_combine_partial_stats(part), m, tiles, common, meta, qk_scale)


@on_input_device
def last_block_profiles(q: torch.Tensor, k: torch.Tensor, block_size: int,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash profiles of the probe, each ``[B, H, Nk]`` fp32 (twin:
    ``last_block_profiles_ref``). q ``[B, H, Nq, D]``, k ``[B, H_kv, Nk, D]``."""
    q, k, probe = _probe_stats(q, k, block_size, scale, 64)
    bsz, heads, nq, _ = q.shape
    nk, m, tiles, common, meta = k.shape[2], probe.m, probe.tiles, probe.common, probe.meta
    rowstat, qk_scale = probe.rowstat, probe.qk_scale
    work = torch.empty((bsz * heads, m, nk), dtype=torch.float32, device=q.device)
    vert = torch.empty((bsz, heads, nk), dtype=torch.float32, device=q.device)
    _probe_probs_kernel[(bsz * heads, tiles)](q, k, rowstat, work, vert, *common, qk_scale, **meta)
    slash = torch.empty_like(vert)
    _slash_kernel[(bsz * heads, triton.cdiv(nk, 256))](work, slash, nk, m, BLOCK_N=256)
    return vert, slash


@triton.jit
def _probe_pooled_kernel(Q, K, RowStat, VertPart, SlashPart, stride_qb, stride_qh, stride_qm, stride_qd,
                         stride_kb, stride_kh, stride_kn, stride_kd, H, GROUP, NQ, NK, M, qk_scale,
                         BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr):
    """One key tile of the probe, reduced on the spot (no ``[BH, M, NK]`` workspace): the tile's
    share of the vertical profile -> VertPart ``[BH, T]``, and of the slash profile pooled by
    offset block (offset ``o = pos_i - j``, block ``o // BLOCK_SIZE``; a tile spans at most three
    such blocks, from ``max(o_min, 0) // BLOCK_SIZE``) -> SlashPart ``[BH, T, 3]``."""
    pid_bh = tl.program_id(0)
    tile = tl.program_id(1)
    n0 = tile * BLOCK_N
    rows, p = _probe_tile_probs(Q, K, RowStat, pid_bh, n0, stride_qb, stride_qh, stride_qm, stride_qd,
                                stride_kb, stride_kh, stride_kn, stride_kd, H, GROUP, NQ, NK, M, qk_scale,
                                BLOCK_M, BLOCK_N, HEAD_DIM)
    pos = NK - M + rows
    tl.store(VertPart + pid_bh * tl.num_programs(1) + tile, tl.sum(tl.sum(p, 1), 0) / M)
    cols = n0 + tl.arange(0, BLOCK_N)
    bins = tl.maximum(pos[:, None] - cols[None, :], 0) // BLOCK_SIZE  # p is 0 where the offset is < 0
    base = tl.maximum(NK - M - (n0 + BLOCK_N - 1), 0) // BLOCK_SIZE
    out = SlashPart + (pid_bh * tl.num_programs(1) + tile) * 3
    for t in tl.static_range(3):
        part = tl.sum(tl.sum(tl.where(bins == base + t, p, 0.0), 1), 0) / M
        tl.store(out + t, part)


@functools.lru_cache(maxsize=64)  # as the other geometry caches: recorded decision graphs read it
def _slash_bins(nk: int, m: int, block_n: int, block_size: int, device) -> torch.Tensor:
    """``[T * 3, nkb]`` fp32 0/1: which offset block each (tile, t) partial of ``_probe_pooled_kernel``
    adds to (partials past the last block go nowhere). Cached per geometry; never modify."""
    nkb = num_blocks(nk, block_size)
    tiles = torch.arange(triton.cdiv(nk, block_n), device=device)
    base = torch.clamp(nk - m - (tiles * block_n + block_n - 1), min=0) // block_size  # [T]
    target = (base[:, None] + torch.arange(3, device=device)[None, :]).reshape(-1)  # [T * 3]
    return (target[:, None] == torch.arange(nkb, device=device)[None, :]).float()


@on_input_device
def last_block_pooled_profiles(q: torch.Tensor, k: torch.Tensor, block_size: int,
                               scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's vertical and slash profiles pooled into key blocks and offset blocks, each
    ``[B, H, nkb]`` fp32: ``pool_cols_sum`` of ``last_block_profiles`` (twin:
    ``reference.last_block_pooled_profiles_ref``) without its ``4 * B * H * m * Nk``-byte workspace.
    Each key tile's probabilities are reduced where they are made; the small per-tile partials are
    summed in torch (a fixed order: the same result on every run)."""
    q, k, probe = _probe_stats(q, k, block_size, scale, min(64, block_size))
    bsz, heads, _, _ = q.shape
    nk, m, tiles, block_n = k.shape[2], probe.m, probe.tiles, probe.meta["BLOCK_N"]
    vert = torch.empty((bsz * heads, tiles), dtype=torch.float32, device=q.device)
    slash = torch.empty((bsz * heads, tiles, 3), dtype=torch.float32, device=q.device)
    _probe_pooled_kernel[(bsz * heads, tiles)](q, k, probe.rowstat, vert, slash, *probe.common, probe.qk_scale,
                                               BLOCK_SIZE=block_size, **probe.meta)
    nkb, sub = num_blocks(nk, block_size), block_size // block_n
    vert = torch.nn.functional.pad(vert, (0, nkb * sub - tiles)).reshape(bsz, heads, nkb, sub).sum(-1)
    pooled = slash.reshape(bsz * heads, tiles * 3) @ _slash_bins(nk, m, block_n, block_size, q.device)
    return vert, pooled.reshape(bsz, heads, nkb)
