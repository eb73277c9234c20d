"""The decision step's CUDA-graph cache on the CPU (a plain call) and the sharing state it relies on
(storage kept across resets and updates). The recording itself is tested on the GPU
(tests/test_gpu/test_prefill_gpu.py)."""
import torch

from sharedattn.analysis.method.coverage import coverage_mask
from sharedattn.analysis.method.decision_graphs import DecisionGraphs
from sharedattn.analysis.method.patterns import mass_covered
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
    state.record_pivotals(state.cluster_row(0, "cpu"), state.layer_index(0, "cpu"), pivotal, mass, own, prof, prof,
                          0.9, 0.95)
    assert bool(state.exists[0, 0]) and state.source[0, 0].tolist() == [0, 0]
    assert bool(state.pattern[0, 0].diagonal().all())
    state.reset(1, 4, 4, "cpu")  # next forward, same geometry: emptied in place
    assert [t.data_ptr() for t in (state.exists, state.pattern, state.v, state.s, state.source)] == ptrs
    assert state.generation == gen and not bool(state.exists.any()) and bool((state.source == -1).all())
    state.reset(1, 5, 5, "cpu")  # another geometry: new storage, and graphs of the old one are stale
    assert state.generation == gen + 1 and state.pattern.shape == (1, 2, 5, 5)
    assert state.cluster_row(1, "cpu").tolist() == [0, 0, 1]


def test_record_pivotals_takes_the_layer_as_tensors():
    """Two layers, two batch elements: each pivotal's map, profiles, fallback flag and source land
    in its cluster's slot, with the layer read from the 0-d tensor; other slots stay empty."""
    table = torch.tensor([[0, 0, -1], [1, -1, 1]])
    state = SharingState(table)
    state.reset(2, 4, 4, "cpu")
    g = torch.Generator().manual_seed(0)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    masses = [torch.rand(2, 3, 4, 4, generator=g).masked_fill(~causal, 0) for _ in range(2)]
    masses = [m / m.sum(-1, keepdim=True) for m in masses]
    own = [torch.rand(2, 3, 4, 4, generator=g) < 0.5 for _ in range(2)]
    v = [torch.rand(2, 3, 4, generator=g) for _ in range(2)]
    s = [torch.rand(2, 3, 4, generator=g) for _ in range(2)]
    pivotal = [torch.tensor([[True, False, False], [False, True, False]]),
               torch.tensor([[False, False, True], [False, False, False]])]
    for layer in (0, 1):
        state.record_pivotals(state.cluster_row(layer, "cpu"), state.layer_index(layer, "cpu"), pivotal[layer],
                              masses[layer], own[layer], v[layer], s[layer], 0.9, 0.8)
    # (batch, cluster) <- (layer, head)
    written = {(0, 0): (0, 0), (1, 0): (0, 1), (0, 1): (1, 2)}
    for b in range(2):
        for c in range(2):
            if (b, c) not in written:
                assert not bool(state.exists[b, c]) and state.source[b, c].tolist() == [-1, -1]
                assert not bool(state.pattern[b, c].any()) and not bool(state.v[b, c].any())
                continue
            layer, head = written[b, c]
            mass = masses[layer][b, head]
            assert bool(state.exists[b, c]) and state.source[b, c].tolist() == [layer, head]
            assert torch.equal(state.pattern[b, c], coverage_mask(mass, 0.9))
            assert torch.equal(state.v[b, c], v[layer][b, head]) and torch.equal(state.s[b, c], s[layer][b, head])
            assert bool(state.vs_enough[b, c]) is bool(mass_covered(own[layer][b, head], mass) >= 0.8)
    assert state.layer_index(1, "cpu").dim() == 0 and int(state.layer_index(1, "cpu")) == 1
