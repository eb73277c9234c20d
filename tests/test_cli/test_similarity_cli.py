"""`sharedattn similarity --records` end to end on synthetic records (no model needed)."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.files.records import save_record
from sharedattn_cli.app import app

runner = CliRunner()


@pytest.fixture()
def records(tmp_path):
    paths = []
    for seed, tokens in ((1, 512), (2, 640), (3, 448)):
        rec = synthetic_record(num_layers=3, num_heads=4, num_tokens=tokens, seed=seed)
        paths.append(str(save_record(rec, tmp_path / f"rec{seed}")))
    return paths


def _records_args(paths):
    return [a for p in paths for a in ("--records", p)]


@pytest.mark.parametrize("metric", ["jaccard", "js", "cosine"])
def test_similarity_json_and_files(records, tmp_path, metric):
    out = tmp_path / "out"
    result = runner.invoke(app, ["similarity", *_records_args(records), "--metric", metric,
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["summary"]["metric"] == metric and len(doc["records"]) == 3
    assert len(doc["summary"]["partners"]) == 12 and doc["consistency"] is None
    matrix = np.load(out / f"similarity-{metric}.npy")
    assert matrix.shape == (12, 12) and np.isfinite(matrix).all()
    assert (out / f"similarity-{metric}.csv").read_text().startswith("head,L0H0,L0H1")


def test_similarity_tables_and_across(records, tmp_path):
    result = runner.invoke(app, ["similarity", *_records_args(records), "--across", "--top-k", "2",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    for text in ("within layers", "closest partners", "cross-input consistency", "Spearman"):
        assert text in result.stdout
    result = runner.invoke(app, ["similarity", *_records_args(records), "--across", "--json",
                                 "--out", str(tmp_path / "o")])
    doc = json.loads(result.stdout)
    assert len(doc["consistency"]["pairs"]) == 3
    assert doc["consistency"]["mean_top_k_overlap"] > doc["consistency"]["chance_top_k_overlap"]


@pytest.mark.parametrize("extra, message", [
    (["--across"], "at least 2 prompts"),
    (["--threshold", "1.5"], "threshold"),
    (["--gamma", "0"], "gamma"),
])
def test_bad_options_exit_2_with_one_line(records, tmp_path, extra, message):
    result = runner.invoke(app, ["similarity", "--records", records[0], *extra, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_mixed_models_and_block_sizes_exit_2(records, tmp_path):
    other = save_record(synthetic_record(num_layers=2, num_heads=4), tmp_path / "other")
    result = runner.invoke(app, ["similarity", "--records", records[0], "--records", str(other)])
    assert result.exit_code == 2 and "different models" in result.output
    blocks = save_record(synthetic_record(num_layers=3, num_heads=4, block_size=32), tmp_path / "b32")
    result = runner.invoke(app, ["similarity", "--records", records[0], "--records", str(blocks)])
    assert result.exit_code == 2 and "block sizes" in result.output


def test_missing_record_exit_2(tmp_path):
    result = runner.invoke(app, ["similarity", "--records", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "no such record" in result.output
