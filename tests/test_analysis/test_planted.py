"""Planted-structure workload and the whole-layer bench helpers (CPU, small shapes)."""
import pytest
import torch
from typer.testing import CliRunner

from sharedattn.analysis.evaluation import layer_bench as lb
from sharedattn.analysis.evaluation.planted import (
    PlantedSpec,
    Style,
    make_template,
    planted_cluster_table,
    planted_densities,
    planted_groups,
    planted_layer,
    style_summary,
)

SPEC = PlantedSpec(heads=8, kv_heads=2, layout=((Style.LOCAL, Style.LOCAL, Style.VERTICAL, Style.DIFFUSE),
                                                  (Style.SLASH, Style.SLASH, Style.RETRIEVAL, Style.RETRIEVAL)))


@pytest.fixture(scope="module")
def layer0():
    return planted_layer(SPEC, 1024, 0, "cpu", torch.float32)


def test_shapes_dtype_and_seeding(layer0):
    q, k, v = planted_layer(SPEC, 1024, 0, "cpu")
    assert q.shape == (1, 8, 1024, 128) and k.shape == v.shape == (1, 2, 1024, 128)
    assert q.dtype == torch.bfloat16 and torch.isfinite(q.float()).all()
    again = planted_layer(SPEC, 1024, 0, "cpu", torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(layer0, again))
    other = planted_layer(PlantedSpec(**{**vars(SPEC), "seed": 1}), 1024, 0, "cpu", torch.float32)
    assert not torch.equal(layer0[0], other[0])


def test_templates_are_shared_across_layers():
    a, b = make_template(SPEC, 1, 8192, "cpu"), make_template(SPEC, 1, 8192, "cpu")
    assert torch.equal(a.stripes, b.stripes) and torch.equal(a.keys, b.keys)
    q1 = planted_layer(SPEC, 512, 1, "cpu", torch.float32)[0]
    q0 = planted_layer(SPEC, 512, 0, "cpu", torch.float32)[0]
    assert not torch.equal(q0, q1)  # layers differ in content and jitter, not in positions


def test_structure_shows_in_attention(layer0):
    q, k, _ = layer0
    probs = (q[0, 0] @ k[0, 0].T / 128 ** 0.5).masked_fill(
        ~torch.ones(1024, 1024, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
    assert probs[512:, 0].mean() > 0.1  # attention sink
    dens = planted_densities(q, k, 0.95)
    summary = style_summary(SPEC, dens)
    assert summary["diffuse"] > 0.8 > summary["local"]
    assert dens.shape == (1, 8) and bool((dens > 0).all())


def test_groups_and_cluster_table():
    assert planted_groups(SPEC) == [[0, 1], [4, 5], [6, 7]]
    table = planted_cluster_table(SPEC, 3)
    assert table.shape == (3, 8)
    assert table[2].tolist() == [0, 0, -1, -1, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        PlantedSpec(heads=6, kv_heads=4)


def _row(n, method, layer, ms, dense):
    return lb.LayerResult(n, method, layer, ms, dense)


def test_crossover_and_recommendation():
    rows = [_row(1024, "vertical-slash", "any", 2.0, 1.0), _row(2048, "vertical-slash", "any", 1.0, 2.0),
            _row(4096, "vertical-slash", "any", 1.0, 3.0), _row(1024, "flexprefill", "any", 0.5, 1.0),
            _row(2048, "flexprefill", "any", 3.0, 2.0), _row(4096, "flexprefill", "any", 1.0, 3.0),
            _row(4096, "shareprefill", "pivotal", 9.0, 3.0)]
    cross = lb.crossover(rows, [1024, 2048, 4096])
    assert cross == {"flexprefill": 4096, "shareprefill (pivotal)": None, "vertical-slash": 2048}
    assert lb.recommended_dense_below(cross, [1024, 2048, 4096]) == 4096
    assert lb.recommended_dense_below({"a": None}, [1]) is None
    assert rows[1].speedup == 2.0 and "speedup" in rows[1].to_json()
    assert lb.results_table(rows)[2].startswith("| 1024 | vertical-slash | any |")


def test_bench_prefill_needs_a_gpu(monkeypatch):
    import typer

    from sharedattn_cli.bench_prefill import register_into

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = typer.Typer()
    register_into(app)

    @app.callback()
    def _cb():
        pass

    res = CliRunner().invoke(app, ["prefill"])
    assert res.exit_code == 2 and "needs a CUDA GPU" in res.output
    for args, says in ((["--methods", "vertical-slash,bogus"], "bogus is not one of"),
                       (["--methods", ""], "(none) is not one of"),
                       (["--gamma", "1.5"], "gamma must be in"),
                       (["--exact-tail", "-1"], "exact_tail must be >= 0")):
        res = CliRunner().invoke(app, ["prefill", *args])  # checked before looking for a GPU
        assert res.exit_code == 2 and says in res.output and len(res.output.strip().splitlines()) == 1, args


def test_bench_length_runs_every_method_on_the_cpu_and_exact_tail_adds_density():
    calls = []

    def timer(fn):  # stands in for CUDA-event timing: run once, report a fixed time
        fn()
        calls.append(1)
        return 1.0

    logged = []
    dense_ms, rows = lb.bench_length(SPEC, 4096, "cpu", timer, 0.9, log=logged.append)
    _, tail = lb.bench_length(SPEC, 4096, "cpu", timer, 0.9, methods=("vertical-slash",),
                              log=logged.append, exact_tail=128)
    assert dense_ms == 1.0 and [(r.method, r.layer) for r in rows] == [
        ("vertical-slash", "any"), ("flexprefill", "any"), ("shareprefill", "pivotal"), ("shareprefill", "shared")]
    assert all(0 < r.density <= 1 and r.rel_error < 0.5 and r.recall > 0.5 for r in rows)
    assert tail[0].density > rows[0].density and tail[0].rel_error <= rows[0].rel_error + 1e-6
    assert logged[0].startswith("n=4096: dense") and len(calls) == 2 + 5
