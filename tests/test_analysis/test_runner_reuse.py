"""Sessions reuse the runner (decision graphs, sharing state) of an earlier session with the same settings."""
from types import SimpleNamespace

import torch

from sharedattn.analysis.hf.sparse_attention import PrefillSession
from sharedattn.analysis.method.method_config import MethodName, make_config


def _session(method="shareprefill", lookup=None, **cfg):
    config = make_config(method, block_size=64, dense_below=0, **cfg)
    return PrefillSession(MethodName(method), config, 2, 4, lookup)


def _lookup(*heads):
    return SimpleNamespace(shared_clusters=[SimpleNamespace(heads=tuple(heads))])


def test_same_settings_reuse_the_runner_other_settings_do_not():
    first = _session(lookup=_lookup((0, 0), (1, 0))).runner()
    assert _session(lookup=_lookup((0, 0), (1, 0))).runner() is first  # equal lookup, equal config
    assert _session(lookup=_lookup((0, 1), (1, 1))).runner() is not first  # another cluster table
    assert _session(lookup=_lookup((0, 0), (1, 0)), gamma=0.9).runner() is not first
    assert _session("vertical-slash").runner() is not first


def test_graph_counts_are_per_session():
    runner = _session("vertical-slash").runner()
    runner.graphs.captures += 2  # as if an earlier session had recorded two decision graphs
    runner.graphs.replays += 5
    later = _session("vertical-slash")
    assert later.runner() is runner
    assert later.graph_counts() == {"recorded": 0, "replayed": 0}
    runner.graphs.replays += 3
    assert later.graph_counts() == {"recorded": 0, "replayed": 3}


def test_a_reused_runner_starts_each_forward_pass_without_pivotals():
    lookup = _lookup((0, 0), (1, 0))
    q = torch.randn(1, 4, 512, 32)
    k, v = torch.randn(1, 2, 512, 32), torch.randn(1, 2, 512, 32)
    for _ in range(2):
        trace = _session(lookup=lookup, tau_qa=0.0, min_budget=64).runner().attend(0, q, k, v, 0.2)[1]
        assert int(trace.decision[0, 0]) == 1  # Decision.PIVOTAL again: state reset at layer 0
