"""`sharedattn cluster --records` and `sharedattn lookup show/validate` end to end."""
import json

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.files.records import save_record
from sharedattn_cli.app import app

runner = CliRunner()


@pytest.fixture()
def records(tmp_path):
    return [str(save_record(synthetic_record(num_layers=3, num_heads=4, seed=s), tmp_path / f"r{s}"))
            for s in (1, 2)]


def _cluster(records, out, *extra):
    args = ["cluster", *[a for p in records for a in ("--records", p)], "-o", str(out), *extra]
    return runner.invoke(app, args)


def test_cluster_writes_a_valid_lookup(records, tmp_path):
    out = tmp_path / "lookup.json"
    result = _cluster(records, out, "--n-clusters", "4", "--metric", "cosine")
    assert result.exit_code == 0, result.output
    assert "4 clusters, 4 shared" in result.stdout
    data = json.loads(out.read_text())
    assert data["calibration"]["metric"] == "cosine" and len(data["calibration"]["prompts"]) == 2
    assert sorted(c["size"] for c in data["clusters"]) == [3, 3, 3, 3]
    shown = runner.invoke(app, ["lookup", "show", str(out)])
    assert shown.exit_code == 0 and "synthetic" in shown.stdout
    valid = runner.invoke(app, ["lookup", "validate", str(out), "--record", records[0]])
    assert valid.exit_code == 0, valid.output
    assert "valid lookup" in valid.stdout


def test_cluster_json_threshold_mode(records, tmp_path):
    result = _cluster(records, tmp_path / "l.json", "--distance-threshold", "0.3", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "sharedattn.lookup" and doc["calibration"]["options"]["distance_threshold"] == 0.3


def test_cluster_autoencoder(records, tmp_path):
    out = tmp_path / "ae.json"
    result = _cluster(records, out, "--features", "autoencoder", "--linkage", "ward", "--n-clusters", "4",
                      "--epochs", "20", "--grid", "16", "--min-similarity", "0")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["calibration"]["options"]["autoencoder"]["epochs"] == 20
    assert sum(c["size"] for c in data["clusters"]) == 12


@pytest.mark.parametrize("extra, message", [
    (["--distance-threshold", "1.5"], "distance_threshold"),
    (["--distance-threshold", "0.4", "--n-clusters", "3"], "exactly one"),
    (["--linkage", "ward"], "ward"),
    (["--min-cluster-size", "1"], "min_cluster_size"),
    (["--min-similarity", "2"], "min_similarity"),
])
def test_bad_cluster_options_exit_2(records, tmp_path, extra, message):
    result = _cluster(records, tmp_path / "x.json", *extra)
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "x.json").exists()


def test_lookup_for_another_model_exit_2(records, tmp_path):
    out = tmp_path / "lookup.json"
    assert _cluster(records, out).exit_code == 0
    other = save_record(synthetic_record(num_layers=2, num_heads=4), tmp_path / "other")
    result = runner.invoke(app, ["lookup", "validate", str(out), "--record", str(other)])
    assert result.exit_code == 2 and "num_layers" in result.output
    result = runner.invoke(app, ["lookup", "validate", str(out), "--random-init", "llama-tiny"])
    assert result.exit_code == 2 and "another model" in result.output


def test_broken_lookup_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "sharedattn.lookup", "schema_version": 1}))
    result = runner.invoke(app, ["lookup", "show", str(bad)])
    assert result.exit_code == 2 and "model" in result.output


def test_lookup_unshare_idle_from_the_pruning_record(records, tmp_path):
    """`lookup unshare-idle` re-prunes from the recorded effects: the cluster that shared no head goes,
    the one over tolerance stays unshared, the busy one stays; no record: one line, exit 2, no file."""
    src, out = tmp_path / "lookup.json", tmp_path / "busy.json"
    assert _cluster(records, src, "--n-clusters", "4", "--metric", "cosine").exit_code == 0
    bare = runner.invoke(app, ["lookup", "unshare-idle", str(src), "-o", str(out)])
    assert bare.exit_code == 2 and "no pruning record" in bare.output and not out.exists()
    data = json.loads(src.read_text())
    ids = [c["id"] for c in data["clusters"]]
    effects = [{"id": ids[0], "shared_heads": 3, "kl_change": 0.0, "kept": True},
               {"id": ids[1], "shared_heads": 0, "kl_change": 0.0, "kept": True},
               {"id": ids[2], "shared_heads": 1, "kl_change": 0.5, "kept": False},
               {"id": ids[3], "shared_heads": 2, "kl_change": -0.1, "kept": True}]
    data["calibration"]["options"]["pruning"] = {"tolerance": 0.05, "effects": effects, "unshared": [ids[2]]}
    for c in data["clusters"]:
        c["shared"] = c["id"] != ids[2]
    src.write_text(json.dumps(data))
    result = runner.invoke(app, ["lookup", "unshare-idle", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"2 of 3 shared clusters kept; unshared (idle): {ids[1]}" in result.stdout
    written = json.loads(out.read_text())
    assert [c["id"] for c in written["clusters"] if c["shared"]] == [ids[0], ids[3]]
    assert written["calibration"]["options"]["pruning"]["unshared"] == [ids[1], ids[2]]
    assert runner.invoke(app, ["lookup", "validate", str(out), "--record", records[0]]).exit_code == 0
