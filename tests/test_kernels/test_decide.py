"""The one-launch mask and layout draft (kernels/decide.py) against its twins
(reference.assemble_masks_ref and BlockLayout.draft), in the Triton interpreter on CPU."""
import pytest
import torch

from sharedattn.kernels.decide import assemble_triton
from sharedattn.kernels.layout import BlockLayout
from sharedattn.kernels.reference import assemble_masks_ref, num_blocks


def _ranks(shape, gen):
    return torch.argsort(torch.rand(*shape, generator=gen), dim=-1)  # a permutation per row


@pytest.mark.parametrize("nq,nk,bs", [(512, 512, 64), (200, 330, 32), (97, 97, 16), (64, 640, 64)])
@pytest.mark.parametrize("parts", ["vs", "qa", "share", "share-last-row-tail"])
def test_assemble_matches_twins(nq, nk, bs, parts):
    gen = torch.Generator().manual_seed(nq + nk + len(parts))
    b, h = 2, 3
    nqb, nkb = num_blocks(nq, bs), num_blocks(nk, bs)
    v_rank, s_rank = _ranks((b, h, nkb), gen), _ranks((b, h, nkb), gen)
    count = lambda *shape: torch.randint(0, nkb + 1, shape, generator=gen)  # noqa: E731
    kwargs = {}
    if parts != "vs":
        kwargs["minimal"] = (count(b, h) // 3, count(b, h) // 3)
        flag = torch.rand(b, h, generator=gen) < 0.5
        kwargs["query_aware"] = (flag, _ranks((b, h, nqb, nkb), gen), count(b, h, nqb))
    if parts.startswith("share"):
        shared = torch.tensor([[True, False, False], [False, True, False]])
        pivotal = torch.tensor([[False, True, False], [False, False, True]])
        pattern = torch.rand(b, h, nqb, nkb, generator=gen) < 0.3
        last_row = (_ranks((b, h, nkb), gen), count(b, h)) if "last-row" in parts else None
        kwargs["share"] = (shared, pivotal, pattern, last_row)
    if "tail" in parts:
        kwargs["tail_first"] = max(nqb - 2, 0)
    v_count, s_count = count(b, h), count(b, h)
    mask, own, counts, ordered, num_full = assemble_triton(v_rank, s_rank, v_count, s_count, nq, nk, bs,
                                                           want_own=True, **kwargs)
    want_mask, want_own = assemble_masks_ref(v_rank, s_rank, v_count, s_count, nq, nk, bs, **kwargs)
    assert torch.equal(mask, want_mask) and torch.equal(own, want_own)
    draft = BlockLayout.draft(want_mask, bs, nq, nk)
    assert torch.equal(counts, draft.counts) and torch.equal(num_full, draft.num_full)
    assert torch.equal(ordered, draft.ordered)
    if parts != "vs":  # both query-aware and other heads
        assert 0 < int(kwargs["query_aware"][0].sum()) < b * h
