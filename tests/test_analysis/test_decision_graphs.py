"""The decision step's CUDA-graph cache on the CPU (a plain call) and the sharing state it relies on
(storage kept across resets and updates). The recording itself is tested on the GPU
(tests/test_gpu/test_prefill_gpu.py)."""
import torch

from sharedattn.analysis.method.decision_graphs import DecisionGraphs
from sharedattn.analysis.method.sharing import SharingState


def test_on_the_cpu_the_step_runs_eagerly():
    graphs = DecisionGraphs()
    calls = []

    def step(x):
        calls.append(1)
        return {"y": x * 2}

    for _ in range(3):
        out = graphs.run("k", step, {"x": torch.ones(3)})
        assert torch.equal(out["y"], torch.full((3,), 2.0))
    assert len(calls) == 3 and graphs.captures == 0 and graphs.replays == 0


def test_sharing_state_keeps_its_storage_for_one_geometry():
    table = torch.tensor([[0, 0, -1], [0, 0, 1]])
    state = SharingState(table)
    state.reset(1, 4, 4, "cpu")
    ptrs = [t.data_ptr() for t in (state.exists, state.pattern, state.v, state.s, state.source)]
    gen = state.generation
    pivotal = torch.tensor([[True, False, False]])
    mass = torch.eye(4).expand(1, 3, 4, 4).contiguous()
    prof = torch.full((1, 3, 4), 0.25)
    own = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    state.record_pivotals(0, pivotal, mass, own, prof, prof, 0.9, 0.95)
    assert bool(state.exists[0, 0]) and state.source[0, 0].tolist() == [0, 0]
    assert bool(state.pattern[0, 0].diagonal().all())
    state.reset(1, 4, 4, "cpu")  # next forward, same geometry: emptied in place
    assert [t.data_ptr() for t in (state.exists, state.pattern, state.v, state.s, state.source)] == ptrs
    assert state.generation == gen and not bool(state.exists.any()) and bool((state.source == -1).all())
    state.reset(1, 5, 5, "cpu")  # another geometry: new storage, and graphs of the old one are stale
    assert state.generation == gen + 1 and state.pattern.shape == (1, 2, 5, 5)
    assert state.cluster_row(1, "cpu").tolist() == [0, 0, 1]
