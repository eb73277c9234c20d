"""`sharedattn compare` end to end on a tiny random model, and its bad inputs."""
import json

import pytest
from typer.testing import CliRunner

from sharedattn_cli.app import app

runner = CliRunner()
TINY = ["--random-init", "llama-tiny", "--tokens", "256", "--min-budget", "64", "--eval-positions", "16",
        "--max-new-tokens", "2"]


def invoke(*args):
    return runner.invoke(app, ["compare", *[str(a) for a in args]])


def _tiny_lookup(tmp_path, model_id="random:llama-tiny", layers=2):
    from sharedattn.analysis.files.fingerprint import ModelFingerprint
    from sharedattn.analysis.offline.clustering import HeadCluster
    from sharedattn.analysis.offline.lookup import Calibration, Lookup, save_lookup

    fp = ModelFingerprint(model_id, layers, 4, 2, 32, 8192)
    cluster = HeadCluster(0, ((0, 0), (1, 0), (1, 1)), True, 0.8)
    return save_lookup(Lookup(fp, Calibration((), 64, 0.95, "jaccard"), (cluster,)), tmp_path / f"{layers}.json")


def test_compare_writes_rows_csv_prompts_and_figures(tmp_path):
    out = tmp_path / "out"
    res = invoke(*TINY, "stdlib-code", "--methods", "a-shape,shareprefill", "--lookup", _tiny_lookup(tmp_path),
                 "--passkey-lengths", "256", "--passkey-depths", "0,1", "--local-tokens", "64",
                 "--csv", tmp_path / "rows.csv", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert [s["method"] for s in doc["summary"]] == ["dense", "a-shape", "shareprefill"]
    assert len(doc["rows"]) == 9 and doc["summary"][0]["task_total"] == 2
    assert doc["method_configs"]["shareprefill"]["min_budget"] == 64
    assert (tmp_path / "rows.csv").read_text().count("\n") == 10
    saved = json.loads((out / "prompts.json").read_text())
    assert len(saved["prompts"]) == 3 and saved["prompts"][1]["answer"]
    assert (out / "passkey-grid.png").stat().st_size > 1000 and (out / "traces.json").is_file()
    again = invoke(*TINY, out / "prompts.json", "--methods", "dense", "-o", tmp_path / "again", "--json",
                   "--no-figures")
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.stdout.strip().splitlines()[-1])["rows"]) == 3


def test_a_grid_row_runs_again_by_the_name_its_results_give_it(tmp_path):
    res = invoke(*TINY, "passkey:depth=0.5,seed=3", "multikey:needles=3,seed=1", "--methods", "dense",
                 "-o", tmp_path / "o", "--no-figures", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    rows = [(r["prompt"], r["kind"], r["length"], r["depth"]) for r in doc["rows"]]
    assert rows == [("passkey:depth=0.5,seed=3", "passkey", 256, 0.5),
                    ("multikey:needles=3,seed=1", "multikey", 256, 0.5)]
    assert doc["summary"][0]["task_total"] == 2


def test_too_long_prompt_is_skipped_with_a_warning_or_truncated(tmp_path):
    from sharedattn.analysis.hf.local_tokenizer import local_tokenizer
    from sharedattn.analysis.hf.models import RANDOM_VOCAB_SIZE

    long_file = tmp_path / "long.txt"
    long_file.write_text("word " * 9000)
    assert len(local_tokenizer(RANDOM_VOCAB_SIZE).encode(long_file.read_text())) > 8192  # llama-tiny's tokenizer
    res = invoke(*TINY, long_file, "stdlib-code", "--methods", "dense", "-o", tmp_path / "o", "--no-figures")
    assert res.exit_code == 0, res.output
    assert "skipping prompt" in res.output and "long.txt" in res.output
    only = invoke(*TINY, long_file, "--methods", "dense", "-o", tmp_path / "o2")
    assert only.exit_code == 2 and "no prompt left" in only.output
    cut = invoke(*TINY, long_file, "--methods", "dense", "--truncate", "--eval-positions", "2",
                 "-o", tmp_path / "o3", "--no-figures", "--json")
    assert cut.exit_code == 0, cut.output
    assert json.loads(cut.stdout.strip().splitlines()[-1])["rows"][0]["tokens"] == 8192


@pytest.mark.parametrize("extra,message", [
    (["--methods", "dense,sparse-magic"], "unknown method 'sparse-magic'"),
    (["--methods", ""], "--methods is empty"),
    (["--methods", "dense,dense"], "twice"),
    (["--passkey-depths", "0,2"], "depths must be between 0 and 1"),
    (["--passkey-lengths", "1k"], "comma-separated numbers"),
    (["--no-text"], "nothing to run"),
    (["--gamma", "0"], "gamma must be in"),
    (["ruler-mq:seed=x"], "use ruler-mq:seed=0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, message):
    res = invoke(*TINY, *extra, "-o", tmp_path)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_lookup_for_another_model_is_rejected(tmp_path):
    res = invoke(*TINY, "--methods", "shareprefill", "--lookup", _tiny_lookup(tmp_path, "other", 3), "-o", tmp_path)
    assert res.exit_code == 2 and "another model" in res.output and "num_layers" in res.output


def test_compare_gamma_sweep_reads_baselines_at_equal_density(tmp_path):
    out = tmp_path / "sweep"
    res = invoke(*TINY, "stdlib-code", "--methods", "vertical-slash,flexprefill", "--gammas", "0.3,0.6,0.95",
                 "--no-recall", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON document for the whole sweep
    doc = json.loads(lines[0])
    assert doc["method"] == "flexprefill" and doc["gammas"] == [0.3, 0.6, 0.95]
    assert [r["gamma"] for r in doc["rows"]] == [0.3, 0.6, 0.95]
    assert set(doc["rows"][0]["baselines"]) == {"vertical-slash"}
    for g in ("0.3", "0.6", "0.95"):
        run = json.loads((out / f"gamma-{g}" / "results.json").read_text())
        assert run["method_configs"]["vertical-slash"]["gamma"] == float(g)
    assert json.loads((out / "matched.json").read_text())["rows"] == doc["rows"]
    assert (out / "matched-kl.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, message", [
    (["--gammas", "0.5,0.9", "--gamma", "0.9"], "not both"),
    (["--gammas", "0.5,0.5"], "twice"),
    (["--gammas", "0.5,x"], "comma-separated numbers"),
    (["--gammas", "0.5,1.5"], "gamma"),
    (["--gammas", "0.5,0.9", "--csv", "rows.csv"], "--csv"),
])
def test_compare_gamma_sweep_bad_input(tmp_path, extra, message):
    res = invoke(*TINY, "stdlib-code", "--methods", "vertical-slash", "-o", tmp_path / "o", *extra)
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "o").exists()


def test_quick_lowers_min_budget_unless_given(tmp_path):
    quick = ["--random-init", "llama-tiny", "--quick", "--methods", "vertical-slash", "--no-recall",
             "--no-figures", "--max-new-tokens", "1", "--eval-positions", "8", "--json"]
    res = invoke(*quick, "--no-text", "--passkey-depths", "0.5", "-o", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["method_configs"]["vertical-slash"]["min_budget"] == 256
    res = invoke(*quick, "--no-text", "--passkey-depths", "0.5", "--min-budget", "512", "-o", tmp_path / "b")
    assert json.loads(res.stdout.strip().splitlines()[-1])["method_configs"]["vertical-slash"]["min_budget"] == 512
