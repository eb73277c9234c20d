"""Block layouts: which key blocks each (batch, query head, query block) keeps.

A :class:`BlockLayout` is the compact, CSR-like form the block-sparse kernel reads. For every
row ``(b, h, r)`` (batch ``b``, query head ``h``, query block ``r``) it stores

* ``counts[b, h, r]``: how many key blocks the row keeps (int32, ``[B, H, nqb]``);
* ``indices[b, h, r, :counts[b, h, r]]``: the kept key-block indices, sorted ascending, unique and
  causal-valid (int32, ``[B, H, nqb, max_kept]``); entries past the count are padding, ``-1``;
* ``num_full[b, h, r]``: how many of those leading indices are *full* blocks, entirely visible to
  every query of block ``r`` (no causal or length mask needed; they come first because the
  indices are sorted). The kernel runs its unmasked loop over them and its masked loop over the
  rest (the diagonal block(s) and a ragged last key block).

Blocks are counted from the start of each tensor and causality is end-aligned (see
``reference.py``): block ``c`` is causal-valid for row ``r`` when it holds at least one key that
some query of block ``r`` may see. Factories drop causal-invalid blocks, so every stored block
contributes work. ``density()`` is kept blocks over causal-valid blocks.

All tensors live on the device of the inputs; the factories use tensor ops only (one host sync,
to size ``max_kept``; :meth:`BlockLayout.draft` leaves that sync to the caller, so a caller can
fetch everything it needs from the device at once).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch

from .reference import causal_block_mask, num_blocks

PAD = -1


@functools.lru_cache(maxsize=64)
def _full_block_mask(nq: int, nk: int, block_size: int, device: torch.device) -> torch.Tensor:
    """Bool ``[nqb, nkb]``: True where every key of block c is visible to every query of block r.
    Cached per geometry: never modify the result."""
    nqb, nkb = num_blocks(nq, block_size), num_blocks(nk, block_size)
    first_pos = torch.arange(nqb, device=device) * block_size + (nk - nq)  # [nqb]
    ends = (torch.arange(nkb, device=device) + 1) * block_size  # [nkb] exclusive block ends
    return (ends[None, :] - 1 <= first_pos[:, None]) & (ends[None, :] <= nk)


class _KeptCounts:
    """What a layout and its draft derive from ``counts`` ``[B, H, nqb]`` and the geometry
    (``nq``, ``nk``, ``block_size``) alone, without a host sync."""

    def causal_blocks(self) -> torch.Tensor:
        """Causal-valid blocks of one head (0-d tensor): ``counts.sum()`` equals this times B x H
        exactly when every block is kept."""
        return causal_block_mask(self.nq, self.nk, self.block_size, self.counts.device).sum()

    def keeps_all(self) -> torch.Tensor:
        """0-d bool tensor: every head keeps every causal-valid block."""
        b, h = self.counts.shape[:2]
        return self.counts.sum() == self.causal_blocks() * b * h

    def head_density(self) -> torch.Tensor:
        """Kept / causal-valid blocks per head, ``[B, H]`` fp32."""
        return self.counts.sum(dim=-1).float() / self.causal_blocks().float()


@dataclass(frozen=True)
class BlockLayout(_KeptCounts):
    """Kept key blocks per (batch, query head, query block); see the module docstring.

    Fields: ``counts`` ``[B, H, nqb]`` int32, ``indices`` ``[B, H, nqb, max_kept]`` int32 (sorted,
    ``-1`` padded), ``num_full`` ``[B, H, nqb]`` int32, ``block_size``, ``nq``, ``nk``.
    Build with :meth:`from_dense` or :meth:`from_indices`, not directly.
    """

    counts: torch.Tensor
    indices: torch.Tensor
    num_full: torch.Tensor
    block_size: int
    nq: int
    nk: int

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.nq <= 0 or self.nk <= 0:
            raise ValueError("block_size, nq and nk must be positive")
        if self.nq > self.nk:
            raise ValueError(f"nq={self.nq} must be <= nk={self.nk} (queries end-aligned to keys)")
        b, h, r = self.counts.shape
        if r != self.num_q_blocks or self.indices.shape[:3] != (b, h, r):
            raise ValueError(
                f"counts {tuple(self.counts.shape)} / indices {tuple(self.indices.shape)} do not match "
                f"{self.num_q_blocks} query blocks"
            )

    @property
    def num_q_blocks(self) -> int:
        return num_blocks(self.nq, self.block_size)

    @property
    def num_kv_blocks(self) -> int:
        return num_blocks(self.nk, self.block_size)

    @property
    def device(self) -> torch.device:
        return self.counts.device

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, H, nqb, nkb)`` of the dense block mask this layout stands for."""
        b, h, r = self.counts.shape
        return (b, h, r, self.num_kv_blocks)

    @classmethod
    def from_dense(cls, mask: torch.Tensor, block_size: int, nq: int | None = None,
                   nk: int | None = None) -> "BlockLayout":
        """From a bool block mask ``[B, H, nqb, nkb]`` (True = keep).

        ``nq``/``nk`` default to ``nqb * block_size`` / ``nkb * block_size``; pass the true token
        counts for ragged lengths. Causal-invalid blocks are dropped.
        """
        draft = cls.draft(mask, block_size, nq, nk)
        return draft.finish(int(draft.counts.max().item()) if draft.counts.numel() else 0)

    @classmethod
    def draft(cls, mask: torch.Tensor, block_size: int, nq: int | None = None,
              nk: int | None = None) -> "LayoutDraft":
        """:meth:`from_dense` up to its host sync: the caller reads ``draft.counts.max()`` (with
        whatever else it needs from the device, in one transfer) and calls ``finish``."""
        if mask.dim() != 4:
            raise ValueError(f"mask must be [B, H, nqb, nkb], got {tuple(mask.shape)}")
        nqb, nkb = mask.shape[2], mask.shape[3]
        nq = nqb * block_size if nq is None else nq
        nk = nkb * block_size if nk is None else nk
        if num_blocks(nq, block_size) != nqb or num_blocks(nk, block_size) != nkb:
            raise ValueError(f"mask {tuple(mask.shape)} does not match nq={nq}, nk={nk}, B={block_size}")
        keep = mask.bool() & causal_block_mask(nq, nk, block_size, mask.device)  # [B, H, nqb, nkb]
        counts = keep.sum(dim=-1, dtype=torch.int32)  # [B, H, nqb]
        # kept columns first, ascending, then nkb: each kept column goes to its rank among the kept
        # ones (a running count), the dropped ones to a spare last slot (no sort)
        cols = torch.arange(nkb, device=mask.device, dtype=torch.int32).expand_as(keep)
        slot = torch.where(keep, torch.cumsum(keep, dim=-1) - 1, nkb)
        ordered = torch.full((*keep.shape[:-1], nkb + 1), nkb, dtype=torch.int32, device=mask.device)
        ordered = ordered.scatter_(-1, slot, cols)[..., :nkb]
        num_full = (keep & _full_block_mask(nq, nk, block_size, mask.device)).sum(dim=-1, dtype=torch.int32)
        return LayoutDraft(counts.contiguous(), ordered, num_full.contiguous(), block_size, nq, nk)

    @classmethod
    def from_indices(cls, indices, block_size: int, nq: int, nk: int,
                     device: torch.device | None = None) -> "BlockLayout":
        """From per-row index lists.

        ``indices`` is either nested sequences ``[B][H][nqb] -> iterable of key-block ints`` or an
        int tensor ``[B, H, nqb, K]`` padded with negative values. Order and duplicates do not
        matter; causal-invalid blocks are dropped.
        """
        nkb = num_blocks(nk, block_size)
        if not isinstance(indices, torch.Tensor):
            indices = _pad_nested(indices, device)
        device = indices.device if device is None else device
        idx = indices.to(device=device, dtype=torch.int64)  # [B, H, nqb, K]
        if idx.numel() and int(idx.max().item()) >= nkb:
            raise ValueError(f"key-block index {int(idx.max())} out of range (nkb={nkb})")
        valid = idx >= 0
        mask = torch.zeros(*idx.shape[:3], nkb + 1, dtype=torch.bool, device=device)
        mask.scatter_(-1, torch.where(valid, idx, torch.full_like(idx, nkb)), True)
        return cls.from_dense(mask[..., :nkb], block_size, nq, nk)

    @classmethod
    def dense_causal(cls, batch: int, heads: int, nq: int, nk: int, block_size: int,
                     device: torch.device) -> "BlockLayout":
        """Every causal-valid block kept (density 1.0)."""
        nqb, nkb = num_blocks(nq, block_size), num_blocks(nk, block_size)
        mask = torch.ones(batch, heads, nqb, nkb, dtype=torch.bool, device=device)
        return cls.from_dense(mask, block_size, nq, nk)

    def to_dense(self) -> torch.Tensor:
        """Bool block mask ``[B, H, nqb, nkb]``."""
        nkb = self.num_kv_blocks
        idx = self.indices.long()
        idx = torch.where(idx >= 0, idx, torch.full_like(idx, nkb))
        out = torch.zeros(*self.counts.shape, nkb + 1, dtype=torch.bool, device=self.device)
        return out.scatter_(-1, idx, True)[..., :nkb]

    def keeps_every_block(self) -> bool:
        """Whether every head keeps every causal-valid block (one host sync)."""
        return bool(self.keeps_all().item())

    def density(self, per_head: bool = False):
        """Kept blocks / causal-valid blocks: a float, or ``[B, H]`` fp32 when ``per_head``."""
        if per_head:
            return self.head_density()
        kept = self.counts.sum(dim=-1).float()  # [B, H]
        return float(kept.sum().item() / (self.causal_blocks().item() * kept.numel()))


@dataclass(frozen=True)
class LayoutDraft(_KeptCounts):
    """A layout before its host sync (see :meth:`BlockLayout.draft`): ``ordered`` holds each row's
    kept key blocks first, ascending, then ``nkb`` for the dropped ones."""

    counts: torch.Tensor
    ordered: torch.Tensor
    num_full: torch.Tensor
    block_size: int
    nq: int
    nk: int

    def density(self) -> torch.Tensor:
        """Kept / causal-valid blocks per head, ``[B, H]`` fp32 (``BlockLayout.density(per_head=True)``)."""
        return self.head_density()

    def finish(self, max_kept: int) -> BlockLayout:
        """The layout, with ``max_kept`` = ``counts.max()`` read by the caller."""
        nkb = self.ordered.shape[-1]
        idx = self.ordered[..., :max(max_kept, 1)]
        idx = torch.where(idx == nkb, torch.full_like(idx, PAD), idx).contiguous()
        return BlockLayout(self.counts, idx, self.num_full, self.block_size, self.nq, self.nk)


def _pad_nested(rows: Sequence, device: torch.device | None) -> torch.Tensor:
    """Nested ``[B][H][nqb]`` lists of ints -> ``[B, H, nqb, K]`` int64 tensor padded with -1."""
    flat = [list(r) for batch in rows for head in batch for r in head]
    nb, nh = len(rows), len(rows[0])
    nr = len(rows[0][0])
    if len(flat) != nb * nh * nr:
        raise ValueError("ragged nesting: every batch/head must list the same number of rows")
    width = max((len(r) for r in flat), default=0) or 1
    out = torch.full((len(flat), width), PAD, dtype=torch.int64)
    for i, r in enumerate(flat):  # host-side Python lists: built on CPU, then moved once
        if r:
            out[i, :len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out.reshape(nb, nh, nr, width).to(device or "cpu")
