"""The prefill report says how many heads were pivotal and shared (what `make demo` shows)."""
import torch

from sharedattn.analysis.method.method_config import Decision
from sharedattn.analysis.method.trace import PrefillTrace
from sharedattn_cli.prefill_report import sharing_line


def _trace(codes) -> PrefillTrace:
    decision = torch.tensor(codes, dtype=torch.int8).reshape(1, len(codes), 1, 1)  # [C, L, B, H]
    zeros = torch.zeros(decision.shape)
    return PrefillTrace(decision, zeros, zeros, torch.full((*decision.shape, 2), -1))


def _doc(codes, method="shareprefill") -> dict:
    return {"method": method, "config": {"tau_fb": 0.95}, "decision_counts": _trace(codes).decision_counts()}


P, S, V, Q, D = (int(d) for d in (Decision.PIVOTAL, Decision.SHARED, Decision.VERTICAL_SLASH,
                                  Decision.QUERY_AWARE, Decision.DENSE))


def test_decision_counts_count_every_entry():
    counts = _trace([P, S, S, V, Q, Q, Q]).decision_counts()
    assert counts == {"dense": 0, "pivotal": 1, "shared": 2, "query-aware": 3, "vertical-slash": 1,
                      "a-shape": 0}


def test_sharing_line_names_pivotal_and_shared_counts():
    line = sharing_line(_doc([P, P, S, S, S, V]))
    assert line.startswith("sharing: 2 pivotal") and "3 of 6 heads used a pivotal's pattern" in line


def test_sharing_line_explains_a_pivotal_that_nobody_used():
    line = sharing_line(_doc([P, V, Q]))
    assert "1 pivotal" in line and "no head used" in line and "tau_fb" in line


def test_sharing_line_only_for_shareprefill_on_the_sparse_path():
    assert sharing_line(_doc([V, Q], method="flexprefill")) is None
    assert sharing_line(_doc([D, D])) is None  # the dense shortcut: the CLI says so separately
    assert sharing_line(_doc([V, Q])).startswith("sharing: no pivotal head")


def test_kernels_line_counts_layers_per_backend():
    from sharedattn_cli.prefill_report import kernels_line

    doc = {"kernels": {"requested": "auto", "per_layer": ["flash", "triton", "flash", "sdpa"],
                       "layers": {"flash": 2, "triton": 1, "sdpa": 1}}}
    assert kernels_line(doc) == "kernels (auto): flash in 2 layers, triton in 1 layer, dense SDPA in 1 layer"
    assert kernels_line({}) is None
