"""Methods at matched density over compare runs: curves, interpolation, checks, and the CLI."""
import json

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.matched_density import build_curves, matched_rows
from sharedattn_cli.app import app

MODEL = {"model_id": "m", "num_layers": 2}
PROMPTS = (("p1", 1024), ("p2", 2048))


def _row(method, prompt, tokens, density, err, kl):
    return {"method": method, "prompt": prompt, "tokens": tokens, "density": density, "error_mean": err,
            "kl_mean": kl}


def _doc(gamma, points, extra=None, model=MODEL, prompts=PROMPTS):
    """``points``: method -> (density, err, kl) on the first prompt; the second prompt adds 0.1 density."""
    configs = {"dense": {"block_size": 64}}
    rows = [_row("dense", p, n, 1.0, 0.0, 0.0) for p, n in prompts]
    for method, (d, e, k) in points.items():
        configs[method] = {"block_size": 64, "gamma": gamma, **(extra or {})}
        rows += [_row(method, p, n, d + 0.1 * i, e, k * (i + 1)) for i, (p, n) in enumerate(prompts)]
    return {"model": model, "method_configs": configs, "rows": rows}


def _docs():
    return [("a.json", _doc(0.9, {"vs": (0.4, 0.10, 0.04), "sp": (0.45, 0.07, 0.03)})),
            ("b.json", _doc(0.95, {"vs": (0.5, 0.06, 0.02), "sp": (0.55, 0.04, 0.01)}))]


def test_baseline_is_read_on_its_own_curve_at_the_target_density():
    curves = build_curves(_docs())
    assert [c.label for c in curves] == ["vs", "sp"]
    vs = curves[0]
    assert [p.gamma for p in vs.points] == [0.9, 0.95] and vs.points[0].density == pytest.approx(0.45)
    assert vs.points[0].kl_mean == pytest.approx(0.06) and vs.points[0].kl_median == pytest.approx(0.06)
    rows = matched_rows(curves, "sp")
    # sp at gamma 0.9 has mean density 0.5: halfway along vs's curve (0.45 -> 0.55)
    first = rows[0]["baselines"]["vs"]
    assert rows[0]["density"] == pytest.approx(0.5)
    assert first["error_mean"] == pytest.approx(0.08) and first["kl_mean"] == pytest.approx(0.045)
    assert rows[1]["baselines"]["vs"] == {"error_mean": None, "kl_mean": None, "kl_median": None}  # 0.6: beyond


def test_tokens_filter_and_parameter_variants():
    only = build_curves(_docs(), tokens=2048)
    assert only[0].points[0].prompts == 1 and only[0].points[0].density == pytest.approx(0.5)
    docs = _docs() + [("c.json", _doc(0.9, {"sp": (0.43, 0.08, 0.035)}, extra={"own_last_row": True}))]
    labels = [c.label for c in build_curves(docs)]
    assert labels == ["vs", "sp (no own_last_row)", "sp own_last_row=True"]
    with pytest.raises(ValueError, match="more than one curve"):
        matched_rows(build_curves(docs), "sp")
    assert len(matched_rows(build_curves(docs), "sp own_last_row=True")) == 1


def test_runs_must_match():
    other_model = ("c.json", _doc(0.97, {"vs": (0.6, 0.05, 0.01)}, model={"model_id": "x", "num_layers": 2}))
    with pytest.raises(ValueError, match="another model.*model_id"):
        build_curves(_docs() + [other_model])
    other_prompts = ("c.json", _doc(0.97, {"vs": (0.6, 0.05, 0.01)}, prompts=(("p1", 1024),)))
    with pytest.raises(ValueError, match="different prompts"):
        build_curves(_docs() + [other_prompts])
    with pytest.raises(ValueError, match="no prompt of 4096"):
        build_curves(_docs(), tokens=4096)
    with pytest.raises(ValueError, match="not a `sharedattn compare`"):
        build_curves([("x.json", {"rows": []})])


def test_matched_cli(tmp_path):
    paths = []
    for name, doc in _docs():
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(doc))
    runner = CliRunner()
    result = runner.invoke(app, ["matched", *map(str, paths), "--method", "sp", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"][0]["baselines"]["vs"]["kl_mean"] == pytest.approx(0.045)
    fig = tmp_path / "curves.png"
    shown = runner.invoke(app, ["matched", *map(str, paths), "--method", "sp", "--figure", str(fig)])
    assert shown.exit_code == 0, shown.output
    assert "read at its density" in shown.stdout and fig.stat().st_size > 1000
    missing = runner.invoke(app, ["matched", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "not found" in missing.output
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\xff")
    assert runner.invoke(app, ["matched", str(bad)]).exit_code == 2
    unknown = runner.invoke(app, ["matched", *map(str, paths), "--method", "nope"])
    assert unknown.exit_code == 2 and "names no curve" in unknown.output
