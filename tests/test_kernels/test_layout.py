import pytest
import torch

from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.reference import causal_block_mask

from ._helpers import random_layout


def test_from_dense_roundtrip_drops_non_causal():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 3, 4, 6, generator=g) < 0.6  # nq=200, nk=330, B=64 -> 4 x 6 blocks
    lay = BlockLayout.from_dense(mask, 64, nq=200, nk=330)
    causal = causal_block_mask(200, 330, 64, mask.device)
    assert torch.equal(lay.to_dense(), mask & causal)
    assert lay.counts.dtype == torch.int32 and lay.indices.dtype == torch.int32
    assert torch.equal(lay.counts, (mask & causal).sum(-1).int())
    for b, h, r in [(0, 0, 0), (1, 2, 3)]:
        row = lay.indices[b, h, r]
        kept = row[: lay.counts[b, h, r]]
        assert torch.all(kept[1:] > kept[:-1]) and torch.all(row[lay.counts[b, h, r]:] == -1)


def test_from_indices_matches_from_dense():
    rows = [[[[0, 2], [1, 0, 1], [2]]]]  # block 2 is beyond the causal edge of row 0
    lay = BlockLayout.from_indices(rows, 32, nq=96, nk=96)
    dense = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    dense[0, 0, 0, 0] = dense[0, 0, 1, 0] = dense[0, 0, 1, 1] = dense[0, 0, 2, 2] = True
    assert torch.equal(lay.to_dense(), dense)
    padded = torch.tensor([[[[0, -1], [1, 0], [2, -1]]]])
    assert torch.equal(BlockLayout.from_indices(padded, 32, 96, 96).to_dense(), dense)


def test_density_and_num_full():
    full = BlockLayout.dense_causal(1, 2, 256, 256, 64, torch.device("cpu"))
    assert full.density() == pytest.approx(1.0)
    assert torch.equal(full.num_full[0, 0], torch.tensor([0, 1, 2, 3], dtype=torch.int32))
    lay = random_layout(2, 2, 320, 512, 64, 0.3)
    assert 0 < lay.density() < 1
    assert lay.density(per_head=True).shape == (2, 2)


def test_bad_inputs():
    with pytest.raises(ValueError):
        BlockLayout.from_dense(torch.ones(2, 2, 2, dtype=torch.bool), 64)
    with pytest.raises(ValueError):
        BlockLayout.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64, nq=64, nk=128)
    with pytest.raises(ValueError):
        BlockLayout.from_indices([[[[7]]]], 64, nq=64, nk=64)


def test_draft_then_finish_equals_from_dense():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(2, 3, 5, 6, generator=g) < 0.4
    whole = BlockLayout.from_dense(mask, 64, 300, 360)
    draft = BlockLayout.draft(mask, 64, 300, 360)
    assert torch.equal(draft.counts, whole.counts) and torch.equal(draft.num_full, whole.num_full)
    done = draft.finish(int(draft.counts.max()))
    assert torch.equal(done.indices, whole.indices) and done.shape == whole.shape
    assert torch.equal(draft.density(), whole.density(per_head=True))
    full = BlockLayout.dense_causal(2, 3, 300, 360, 64, torch.device("cpu"))
    assert int(full.counts.sum()) == int(draft.causal_blocks()) * 6 and full.keeps_every_block()
    assert not whole.keeps_every_block()


def test_draft_orders_kept_columns_like_a_sort():
    """The draft places each row's kept key blocks first, ascending, then nkb (built without a sort)."""
    from sharedattn.kernels.reference import causal_block_mask

    torch.manual_seed(3)
    for nq, nk, bs in ((1500, 1536, 64), (256, 256, 32), (100, 700, 64)):
        nqb, nkb = -(-nq // bs), -(-nk // bs)
        mask = torch.rand(2, 3, nqb, nkb) < 0.4
        draft = BlockLayout.draft(mask, bs, nq, nk)
        keep = mask & causal_block_mask(nq, nk, bs, mask.device)
        cols = torch.arange(nkb, dtype=torch.int32)
        want = torch.sort(torch.where(keep, cols, torch.full_like(cols, nkb)), dim=-1).values
        assert torch.equal(draft.ordered, want)
        assert torch.equal(draft.counts, keep.sum(-1, dtype=torch.int32))
