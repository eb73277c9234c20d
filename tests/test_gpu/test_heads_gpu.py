"""The one-launch head decisions (kernels/heads.py) on the GPU against their twin: the bitonic
sort of packed keys at the widths real prompts reach (32K and 128K tokens at block 128)."""
import pytest
import torch
from head_cases import METHODS, check_coverage_rows, check_head_decisions, check_record_pivotals


@pytest.mark.parametrize("nkb", [256, 250, 1024])
@pytest.mark.parametrize("method", METHODS)
def test_head_decisions_match_twin_on_cuda(nkb, method):
    check_head_decisions(nkb, method, torch.device("cuda"))


@pytest.mark.parametrize("nkb", [256, 250, 1024])
def test_coverage_rows_match_twin_on_cuda(nkb):
    check_coverage_rows(nkb, torch.device("cuda"))


@pytest.mark.parametrize("needs_sparser", [False, True])
@pytest.mark.parametrize("nqb,nkb", [(256, 256), (64, 250), (1024, 1024)])
def test_record_pivotals_match_twin_on_cuda(nqb, nkb, needs_sparser):
    check_record_pivotals(nqb, nkb, needs_sparser, torch.device("cuda"))
