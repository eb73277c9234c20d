"""Models with local (sliding-window) and global layers: records say which layers are local,
similarity and clustering keep the two kinds apart, and `lookup validate` checks them."""
import json

import pytest
import torch
from typer.testing import CliRunner

from sharedattn.analysis.files.fingerprint import FormatError
from sharedattn.analysis.files.prompts import Prompt
from sharedattn.analysis.files.records import load_record, save_record
from sharedattn.analysis.hf.capture import CaptureConfig, capture_prompt
from sharedattn.analysis.hf.models import layer_windows_of, load_model, random_config
from sharedattn.analysis.offline.cluster_config import ClusterConfig
from sharedattn.analysis.offline.lookup import lookup_from_records, save_lookup
from sharedattn.analysis.offline.similarity import SimilarityConfig, similarity_matrix
from sharedattn.analysis.offline.similarity_report import summarize
from sharedattn_cli.app import app

runner = CliRunner()
SHAPE = "gemma3-tiny:4"  # layers 0 and 2 local (window 128), 1 and 3 global


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    loaded = load_model(random_init=SHAPE, dtype="float32", device="cpu")
    folder = tmp_path_factory.mktemp("recs")
    out = []
    for seed in (0, 1):
        ids = tuple(torch.randint(0, 1000, (320,), generator=torch.Generator().manual_seed(seed)).tolist())
        record, _ = capture_prompt(loaded, Prompt(f"p{seed}", "x", ids), CaptureConfig(block_size=32, chunk_size=64))
        out.append(save_record(record, folder / f"r{seed}"))
    return out


def test_windows_from_the_family_configs():
    assert layer_windows_of(random_config(SHAPE)) == (128, None, 128, None)
    assert layer_windows_of(random_config("qwen2-tiny")) == (None, 128)
    assert layer_windows_of(random_config("mistral-tiny")) == (4096, 4096)
    assert layer_windows_of(random_config("llama-tiny")) is None


def test_capture_writes_the_local_layers(records):
    data = json.loads(records[0].read_text())
    assert data["layer_windows"] == [128, None, 128, None]
    assert load_record(records[0]).meta.windows == (128, None, 128, None)


def test_record_without_the_field_loads_as_all_global(records, tmp_path):
    data = json.loads(records[0].read_text())
    del data["layer_windows"]
    stem = tmp_path / "old"
    (tmp_path / "old.json").write_text(json.dumps(data))
    (tmp_path / "old.safetensors").write_bytes(records[0].with_suffix(".safetensors").read_bytes())
    meta = load_record(stem).meta
    assert meta.layer_windows is None and meta.windows == (None,) * 4


@pytest.mark.parametrize("bad, message", [([128, None], "layer_windows: expected a list of 4"),
                                          ([128, None, 0, None], r"layer_windows\[2\]: expected a positive int"),
                                          ("128", "layer_windows: expected a list")])
def test_bad_windows_are_named(records, tmp_path, bad, message):
    data = json.loads(records[0].read_text())
    data["layer_windows"] = bad
    (tmp_path / "bad.json").write_text(json.dumps(data))
    (tmp_path / "bad.safetensors").write_bytes(records[0].with_suffix(".safetensors").read_bytes())
    with pytest.raises(FormatError, match=message):
        load_record(tmp_path / "bad")


def _kind(layer: int) -> bool:
    return layer % 2 == 0  # local


@pytest.mark.parametrize("metric", ["jaccard", "js", "cosine"])
def test_cross_kind_pairs_have_similarity_zero(records, metric):
    rec = load_record(records[0])
    sim = similarity_matrix(rec, SimilarityConfig(metric=metric))
    heads = rec.meta.model.num_heads
    for i in range(sim.shape[0]):
        for j in range(sim.shape[0]):
            if _kind(i // heads) != _kind(j // heads):
                assert sim[i, j] == 0.0
    summary = summarize(sim, 4, heads, metric, 0.5, rec.meta.windows)
    assert summary.local_layers == (0, 2)
    assert all(_kind(p.layer) == _kind(p.partner_layer) for p in summary.partners)


@pytest.mark.parametrize("options", [{"n_clusters": 1}, {"n_clusters": 3}, {"distance_threshold": 1.0}])
def test_no_cluster_mixes_local_and_global_heads(records, options):
    recs = [load_record(r) for r in records]
    lookup = lookup_from_records(recs, SimilarityConfig(metric="cosine"), ClusterConfig(min_similarity=0.0, **options))
    assert sorted(h for c in lookup.clusters for h in c.heads) == [(l, h) for l in range(4) for h in range(2)]
    for c in lookup.clusters:
        assert len({_kind(layer) for layer, _ in c.heads}) == 1, c
    assert lookup.calibration.layer_windows == (128, None, 128, None)


def test_cluster_and_similarity_cli_say_so(records, tmp_path):
    args = [a for r in records for a in ("--records", str(r))]
    out = tmp_path / "lookup.json"
    result = runner.invoke(app, ["cluster", *args, "-o", str(out), "--n-clusters", "2"])
    assert result.exit_code == 0, result.output
    assert "clustered separately" in result.stdout
    assert json.loads(out.read_text())["calibration"]["layer_windows"] == [128, None, 128, None]
    result = runner.invoke(app, ["similarity", *args, "--out", str(tmp_path / "sim"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"]["local_layers"] == [0, 2]
    result = runner.invoke(app, ["similarity", *args, "--out", str(tmp_path / "sim")])
    assert "local (sliding-window) layers [0, 2]" in result.stdout


def test_lookup_validate_checks_the_local_layers(records, tmp_path):
    recs = [load_record(r) for r in records]
    path = save_lookup(lookup_from_records(recs, SimilarityConfig(), ClusterConfig()), tmp_path / "l.json")
    ok = runner.invoke(app, ["lookup", "validate", str(path), "--random-init", SHAPE])
    assert ok.exit_code == 0, ok.output
    assert runner.invoke(app, ["lookup", "validate", str(path), "--record", str(records[0])]).exit_code == 0
    data = json.loads(path.read_text())
    data["calibration"]["layer_windows"] = [None, 128, None, 128]
    path.write_text(json.dumps(data))
    bad = runner.invoke(app, ["lookup", "validate", str(path), "--random-init", SHAPE])
    assert bad.exit_code == 2
    assert "calibration.layer_windows" in bad.output and len(bad.output.strip().splitlines()) == 1
    del data["calibration"]["layer_windows"]  # an older lookup: all global, not this model
    path.write_text(json.dumps(data))
    old = runner.invoke(app, ["lookup", "validate", str(path), "--random-init", SHAPE])
    assert old.exit_code == 2 and "calibration.layer_windows" in old.output
    data["calibration"]["layer_windows"] = [1, 2]
    path.write_text(json.dumps(data))
    broken = runner.invoke(app, ["lookup", "validate", str(path), "--random-init", SHAPE])
    assert broken.exit_code == 2 and "calibration.layer_windows: expected a list of 4" in broken.output


def test_prefill_refuses_a_lookup_with_other_local_layers_and_show_lists_them(records, tmp_path):
    recs = [load_record(r) for r in records]
    path = save_lookup(lookup_from_records(recs, SimilarityConfig(), ClusterConfig()), tmp_path / "l.json")
    shown = runner.invoke(app, ["lookup", "show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "local layers" in shown.stdout and "0: 128" in shown.stdout and "2: 128" in shown.stdout
    data = json.loads(path.read_text())
    data["calibration"]["layer_windows"] = [None, 128, None, 128]
    path.write_text(json.dumps(data))
    out = tmp_path / "run"
    bad = runner.invoke(app, ["prefill", "--random-init", SHAPE, "passkey", "--tokens", "320", "--method",
                              "shareprefill", "--lookup", str(path), "--dense-below", "0", "--block-size", "32",
                              "-o", str(out)])
    assert bad.exit_code == 2, bad.output
    error = [line for line in bad.output.splitlines() if line.startswith("error:")]
    assert error == ["error: lookup was made for another model (calibration.layer_windows: lookup "
                     "[global, 128, global, 128], model [128, global, 128, global])"], bad.output
    assert not out.exists()  # nothing half-written
