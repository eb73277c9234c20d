"""Helpers shared by the kernel tests: random inputs, random layouts, calibrated tolerances."""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import torch

from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.reference import num_blocks


def make_qkv(b, h, hkv, nq, nk, d, dtype, device="cpu", seed=0):
    """Random q ``[b, h, nq, d]``, k/v ``[b, hkv, nk, d]`` (never zeros)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, h, nq, d, generator=g)
    k = torch.randn(b, hkv, nk, d, generator=g)
    v = torch.randn(b, hkv, nk, d, generator=g)
    return (x.to(device=device, dtype=dtype) for x in (q, k, v))


def random_layout(b, h, nq, nk, bs, density, device="cpu", seed=0, keep_diag=True):
    """Random block mask at roughly ``density``; keeps block 0 and the diagonal when asked."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
    mask = torch.rand(b, h, nqb, nkb, generator=g) < density
    if keep_diag:
        r = torch.arange(nqb)
        diag = ((torch.clamp((r + 1) * bs, max=nq) - 1 + nk - nq) // bs)  # [nqb]
        mask[:, :, r, diag] = True
        mask[..., 0] = True
    return BlockLayout.from_dense(mask.to(device), bs, nq, nk)


def tolerance(out_lp: torch.Tensor, ref32: torch.Tensor, torch_lp: torch.Tensor, abs_tol=1e-5) -> float:
    """Flash-attention-style bound: 2x torch's own low-precision error plus a small absolute term."""
    return 2.0 * (torch_lp.float() - ref32).abs().max().item() + abs_tol


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@contextmanager
def recorded_compiles(monkeypatch, mode: str):
    """The flash backend's compiled bodies in ``mode`` (dynamic or static) with a dynamo backend that
    records every graph it is handed and runs it eagerly: yields ``(graphs, backend)`` (pass
    ``backend`` to ``flash._compiled``); afterwards flash's compile cache and dynamo are cleared."""
    from sharedattn.kernels import flash

    graphs = []

    def recording(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(flash, "COMPILE", mode)
    torch._dynamo.reset()
    try:
        yield graphs, recording
    finally:
        flash._compiled.cache_clear()
        torch._dynamo.reset()


class FakeFlashAttn4:
    """A stand-in for the two names of flash-attn-4 that the flash backend's direct mode imports,
    installed as the modules ``flash_attn.cute.interface`` and ``flash_attn.cute.block_sparsity`` in
    ``sys.modules`` (``install``). Its ``_flash_attn_fwd`` takes only the arguments the backend
    should pass (anything else is a TypeError), logs each call's arguments in ``calls``, and computes
    what the kernel computes from the block lists it is handed, in fp32: full blocks whole, partial
    blocks through the end-aligned causal mask when ``causal``, q/k/v and the output ``[B, N, H, D]``
    (K/V heads shared by groups of query heads), the log-sum-exp ``[B, H, Nq]`` in natural log. Rows
    that see no key get +inf there (what flash-attn-2 wrote), which the backend must turn into -inf;
    ``outputs`` keeps each returned ``(out, lse)``."""

    def __init__(self):
        self.calls, self.outputs = [], []

    def install(self, monkeypatch) -> "FakeFlashAttn4":
        from typing import NamedTuple

        class BlockSparseTensorsTorch(NamedTuple):  # the fields the backend fills, by name
            mask_block_cnt: torch.Tensor
            mask_block_idx: torch.Tensor
            full_block_cnt: torch.Tensor | None = None
            full_block_idx: torch.Tensor | None = None
            block_size: tuple[int, int] | None = None

        interface, sparsity = types.ModuleType("flash_attn.cute.interface"), types.ModuleType(
            "flash_attn.cute.block_sparsity")
        interface._flash_attn_fwd = self.forward
        sparsity.BlockSparseTensorsTorch = BlockSparseTensorsTorch
        monkeypatch.setitem(sys.modules, interface.__name__, interface)
        monkeypatch.setitem(sys.modules, sparsity.__name__, sparsity)
        return self

    def forward(self, q, k, v, *, softmax_scale=None, causal=False, block_sparse_tensors=None, return_lse=False):
        from sharedattn.kernels.flex_mask import _dense_blocks
        from sharedattn.kernels.reference import causal_token_mask, expand_kv

        self.calls.append({"q": q, "k": k, "v": v, "softmax_scale": softmax_scale, "causal": causal,
                           "block_sparse_tensors": block_sparse_tensors, "return_lse": return_lse})
        (nq, h, d), nk = q.shape[1:], k.shape[1]
        bq, bk = block_sparse_tensors.block_size
        nkb = num_blocks(nk, bk)
        part = _dense_blocks(block_sparse_tensors.mask_block_cnt, block_sparse_tensors.mask_block_idx, nkb)
        full = _dense_blocks(block_sparse_tensors.full_block_cnt, block_sparse_tensors.full_block_idx, nkb)

        def tokens(blocks):  # [B, H, nqb, nkb] -> [B, H, Nq, Nk]
            return blocks.repeat_interleave(bq, dim=2).repeat_interleave(bk, dim=3)[:, :, :nq, :nk]

        visible = causal_token_mask(nq, nk, q.device) | (not causal)  # [Nq, Nk]
        keep = tokens(full) | (tokens(part) & visible)  # [B, H, Nq, Nk]
        qh, kh, vh = (x.transpose(1, 2).float() for x in (q, k, v))  # [B, heads, N, D]
        scale = d ** -0.5 if softmax_scale is None else softmax_scale
        logits = (qh @ expand_kv(kh, h).transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
        lse = torch.logsumexp(logits, dim=-1)  # [B, H, Nq]; -inf where a row sees nothing
        probs = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
        out = (probs @ expand_kv(vh, h)).transpose(1, 2).contiguous().to(q.dtype)  # [B, Nq, H, D]
        lse = torch.where(torch.isfinite(lse), lse, float("inf")) if return_lse else None
        self.outputs.append((out, lse))
        return out, lse, None, None, None
