"""Every head's decision in one launch (kernels/heads.py) against its twin, in the Triton
interpreter on CPU (the cases: tests/head_cases.py)."""
import pytest
import torch
from head_cases import CODES, METHODS, check_coverage_rows, check_head_decisions, check_record_pivotals

from sharedattn.kernels.heads import head_decisions_triton
from sharedattn.kernels.reference import ShareState, head_decisions_ref


@pytest.mark.parametrize("nkb", [5, 37, 130])
@pytest.mark.parametrize("method", METHODS)
def test_head_decisions_match_twin(nkb, method):
    check_head_decisions(nkb, method, torch.device("cpu"))


def test_sorts_like_torch_on_nan_inf_negative_and_signed_zero():
    """Ranks follow torch.sort(stable=True) on NaN (as -1), infinities, negatives and -0.0; the
    last-row ranks count NaN, infinities and negatives as zero."""
    row = torch.tensor([0.5, float("nan"), -0.0, 0.0, float("inf"), -2.0, 0.5, float("-inf"), 0.0, -1.0, 1e-30])
    vertical = torch.stack([row, row.flip(0)])[None]  # [1, 2, 11]
    cluster = torch.tensor([0, 0])
    st = ShareState(cluster, torch.zeros(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.bool),
                    torch.zeros(1, 1, 11), torch.zeros(1, 1, 11), torch.full((1, 1, 2), -1), 0.2)
    kw = dict(gamma=0.95, min_count=1, codes=CODES, share=st, last_row=True)
    got = head_decisions_triton(vertical, vertical, **kw)
    want = head_decisions_ref(vertical, vertical, **kw)
    for name in ("v_rank", "s_rank", "lr_rank", "lr_count", "decision", "pivotal"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.pivotal.tolist() == [[True, False]]  # the lower head of the cluster claims it


@pytest.mark.parametrize("nkb", [5, 37, 130])
def test_coverage_rows_match_twin(nkb):
    check_coverage_rows(nkb, torch.device("cpu"))


@pytest.mark.parametrize("needs_sparser", [False, True])
@pytest.mark.parametrize("nqb,nkb", [(4, 4), (3, 37), (9, 130)])
def test_record_pivotals_match_twin(nqb, nkb, needs_sparser):
    check_record_pivotals(nqb, nkb, needs_sparser, torch.device("cpu"))
