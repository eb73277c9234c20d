"""BlockLayout -> FlexAttention BlockMask (kernels/flex_mask.py) against the torch twin, on CPU.

FlexAttention's eager CPU path applies only the ``mask_mod`` and ignores the block lists, so the
lists are checked three ways: the plain-torch reading of the BlockMask (``block_mask_token_mask``:
full blocks whole, partial blocks through ``mask_mod``) must equal the twin's token mask exactly
and give the twin's output; inductor's fused CPU kernel (which does read the lists) must give the
twin's output; and the eager path must equal dense when every block is kept.
"""
import contextlib

import pytest
import torch

from sharedattn import kernels
from sharedattn.kernels import flex_mask as fm
from sharedattn.kernels import reference as ref
from sharedattn.kernels.layout import BlockLayout, _full_block_mask

from ._helpers import make_qkv, random_layout

# (B, H, H_kv, Nq, Nk, block, density): equal lengths, chunked prefill (Nq < Nk, offset not a
# multiple of the block), ragged lengths, GQA, batch 2, other block sizes
CASES = [
    (2, 4, 2, 256, 256, 64, 0.4),
    (1, 4, 1, 200, 450, 64, 0.5),
    (2, 2, 2, 300, 300, 64, 0.3),
    (1, 4, 2, 77, 333, 32, 0.5),
    (2, 4, 4, 512, 512, 128, 0.5),
    (1, 2, 1, 130, 130, 16, 0.2),
]


def twin_keep(layout: BlockLayout) -> torch.Tensor:
    """The twin's token mask: kept blocks expanded, and end-aligned causality."""
    keep = ref.block_mask_to_token_mask(layout.to_dense(), layout.nq, layout.nk, layout.block_size)
    return keep & ref.causal_token_mask(layout.nq, layout.nk, keep.device)


def emulated(q, k, v, block_mask, scale=None):
    keep, overlap = fm.block_mask_token_mask(block_mask)
    assert not overlap.any(), "a block is both full and partial"
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale,
                                                           enable_gqa=q.shape[1] != k.shape[1])
    return keep, torch.nan_to_num(out, nan=0.0)  # rows with nothing kept attend to nothing


def check(layout: BlockLayout, q, k, v, scale=None):
    bm = fm.to_block_mask(layout)
    assert bm.seq_lengths == (layout.nq, layout.nk) and bm.BLOCK_SIZE == (layout.block_size,) * 2
    keep, got = emulated(q, k, v, bm, scale)
    assert torch.equal(keep, twin_keep(layout))
    want = ref.block_sparse_attention_ref(q, k, v, layout.to_dense(), layout.block_size, scale)
    assert (got - want).abs().max().item() < 1e-5
    with kernels.use_backend("reference"):
        ours = kernels.sparse_attention(q, k, v, layout, scale=scale)
    assert (got - ours).abs().max().item() < 1e-5
    return bm


@pytest.mark.parametrize("b,h,hkv,nq,nk,bs,density", CASES)
def test_random_layouts_match_the_twin(b, h, hkv, nq, nk, bs, density):
    q, k, v = make_qkv(b, h, hkv, nq, nk, 32, torch.float32, seed=nq + nk)
    layout = random_layout(b, h, nq, nk, bs, density, seed=bs)
    bm = check(layout, q, k, v, scale=0.2)
    # full blocks need no mask: every one is entirely visible to its row and never the ragged block
    full = fm._dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, layout.num_kv_blocks)
    assert not (full & ~_full_block_mask(nq, nk, bs, full.device)).any()
    assert bm.kv_indices.shape[-1] == fm.partial_width(nq, nk, bs)
    assert all(t.dtype == torch.int32 and t.is_contiguous() for t in
               (bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices))


@pytest.mark.parametrize("nq,nk,bs", [(256, 256, 64), (200, 450, 64), (300, 301, 64), (5, 300, 32)])
def test_every_block_kept_is_dense(nq, nk, bs):
    q, k, v = make_qkv(2, 4, 2, nq, nk, 32, torch.float32, seed=3)
    layout = BlockLayout.dense_causal(2, 4, nq, nk, bs, q.device)
    dense = ref.attention_ref(q, k, v)
    bm = check(layout, q, k, v)
    _, got = emulated(q, k, v, bm)
    assert (got - dense).abs().max().item() < 1e-5
    # FlexAttention itself (eager on CPU: mask_mod only) with the end-aligned mask_mod, GQA, a scale
    with _quiet():
        out = torch.nn.attention.flex_attention.flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    assert (out - dense).abs().max().item() < 1e-5


@pytest.mark.parametrize("nq,nk,bs", [(256, 256, 64), (200, 450, 64), (300, 300, 64)])
def test_only_the_diagonal(nq, nk, bs):
    q, k, v = make_qkv(1, 2, 1, nq, nk, 32, torch.float32, seed=4)
    layout = random_layout(1, 2, nq, nk, bs, 0.0, seed=5)  # diagonal and block 0 only
    mask = layout.to_dense()
    mask[..., 0] = False  # then block 0 off as well, except where it is the diagonal
    r = torch.arange(mask.shape[2])
    mask[:, :, r, (torch.clamp((r + 1) * bs, max=nq) - 1 + nk - nq) // bs] = True
    check(BlockLayout.from_dense(mask, bs, nq, nk), q, k, v)


def test_rows_with_nothing_kept():
    q, k, v = make_qkv(1, 2, 2, 256, 256, 32, torch.float32, seed=6)
    layout = random_layout(1, 2, 256, 256, 64, 0.3, seed=7, keep_diag=False)
    assert (layout.counts == 0).any()
    check(layout, q, k, v)


def test_partial_width_bounds_every_row():
    for bs in (16, 64):
        for nk in (bs, 3 * bs, 3 * bs + 5, 200):
            for nq in {1, bs - 1, bs, bs + 3, nk // 2 + 1, nk}:
                if not 0 < nq <= nk:
                    continue
                causal = ref.causal_block_mask(nq, nk, bs, torch.device("cpu"))
                partial = causal & ~_full_block_mask(nq, nk, bs, torch.device("cpu"))
                assert fm.partial_width(nq, nk, bs) == max(int(partial.sum(-1).max()), 1), (nq, nk, bs)


def test_fixed_widths():
    layout = random_layout(1, 2, 300, 300, 64, 0.3, seed=8)
    nkb = layout.num_kv_blocks
    num_part, part_idx, num_full, full_idx = fm.block_mask_tensors(layout, full_width=nkb, partial_width_min=nkb)
    assert full_idx.shape[-1] == nkb and part_idx.shape[-1] == nkb
    bm = fm.block_mask_from_tensors((num_part, part_idx, num_full, full_idx), 64, 300, 300, fm.end_aligned_causal(0))
    assert torch.equal(fm.block_mask_token_mask(bm)[0], twin_keep(layout))


def test_tensor_offset_mask_mod():
    q_idx, kv_idx = torch.arange(4)[:, None], torch.arange(12)[None, :]
    for off in (7, torch.tensor([7])):  # an int (static compile) or a [1] tensor (dynamic compile)
        assert torch.equal(fm.end_aligned_causal(off)(None, None, q_idx, kv_idx), kv_idx <= q_idx + 7)
    assert fm.end_aligned_causal(0) is fm._causal


def test_no_host_sync(monkeypatch):
    """The conversion reads nothing back from the device (CPU stand-in: the reads would raise)."""
    layout = random_layout(2, 4, 200, 450, 64, 0.5, seed=9)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync in the BlockMask conversion")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    monkeypatch.setattr(torch, "nonzero", refuse)
    bm = fm.to_block_mask(layout)
    monkeypatch.undo()
    assert torch.equal(fm.block_mask_token_mask(bm)[0], twin_keep(layout))


def test_inductor_cpu_kernel_reads_the_lists():
    """inductor's fused CPU FlexAttention kernel honours full and partial lists: the same output as
    the twin on a sparse chunked, ragged, GQA, batch-2 layout (one compile, about 30 s)."""
    b, h, hkv, nq, nk, bs = 2, 4, 2, 200, 450, 64
    q, k, v = make_qkv(b, h, hkv, nq, nk, 32, torch.float32, seed=10)
    layout = random_layout(b, h, nq, nk, bs, 0.4, seed=11)
    nkb = layout.num_kv_blocks
    tensors = fm.block_mask_tensors(layout, full_width=nkb, partial_width_min=nkb)  # the CPU kernel wants nkb
    bm = fm.block_mask_from_tensors(tensors, bs, nq, nk, fm.end_aligned_causal(nk - nq))
    flex = torch.compile(torch.nn.attention.flex_attention.flex_attention, dynamic=False)
    out = flex(q, k, v, block_mask=bm, scale=0.2, enable_gqa=True)
    want = ref.block_sparse_attention_ref(q, k, v, layout.to_dense(), bs, 0.2)
    assert (out - want).abs().max().item() < 1e-5
    assert (out - ref.attention_ref(q, k, v, 0.2)).abs().max().item() > 1e-2  # it did skip blocks


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
