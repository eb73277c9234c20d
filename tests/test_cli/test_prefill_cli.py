"""`sharedattn prefill` end to end on a tiny random model, and its bad inputs."""
import json

import pytest
from typer.testing import CliRunner

from sharedattn_cli.app import app

runner = CliRunner()
TINY = ["--random-init", "llama-tiny", "--tokens", "512", "--dense-below", "0", "--min-budget", "64",
        "--max-new-tokens", "3"]


def invoke(*args):
    return runner.invoke(app, ["prefill", *[str(a) for a in args]])


def test_prefill_reports_against_dense(tmp_path):
    res = invoke(*TINY, "--method", "flexprefill", "-o", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    s = doc["summary"]
    assert s["method"] == "flexprefill" and s["tokens"] == 512 and 0 < s["density"] <= 1
    assert len(doc["layer_errors"]) == 2 and doc["config"]["min_budget"] == 64
    assert set(doc["timing"]) == {"dense", "flexprefill"}
    assert doc["decision_graphs"] == {"recorded": 0, "replayed": 0}  # CUDA graphs: GPU only
    # which kernel each layer ran: here every block is kept (density 1.0), so dense SDPA
    assert doc["kernels"] == {"requested": "auto", "per_layer": ["sdpa", "sdpa"], "layers": {"sdpa": 2}}
    trace = json.loads((tmp_path / "prefill-flexprefill.json").read_text())["trace"]
    assert len(trace["heads"]) == 8 and (tmp_path / "prefill-flexprefill-trace.png").stat().st_size > 1000


def test_a_generated_task_of_the_compare_grid_runs_by_name_and_is_scored(tmp_path):
    res = invoke(*TINY, "ruler-mq:seed=2", "--method", "a-shape", "--no-layer-errors", "-o", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["prompt"]["name"] == "ruler-mq:seed=2" and doc["prompt"]["tokens"] == 512
    assert doc["prompt"]["expected_answer"] == "95455|35198"  # two numbers: right only if both are said
    gen = doc["generation"]
    assert gen["correct_dense"] is False and gen["correct_a-shape"] is False  # random weights say neither


def test_reports_the_kernel_of_each_layer(tmp_path):
    res = invoke(*TINY, "--method", "vertical-slash", "--gamma", "0.3", "--kernel", "auto", "--no-layer-errors",
                 "-o", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["summary"]["density"] < 1 and doc["config"]["kernel"] == "auto"
    # CPU: the block-sparse calls run on the torch twin; the summary counts layers per backend
    assert doc["kernels"] == {"requested": "auto", "per_layer": ["reference", "reference"],
                              "layers": {"reference": 2}} and doc["summary"]["kernels"] == {"reference": 2}


def test_bench_prints_json_line_last(tmp_path):
    res = invoke(*TINY, "--method", "a-shape", "--bench", "--repeats", "2", "--warmup", "1",
                 "--no-layer-errors", "-o", tmp_path)
    assert res.exit_code == 0, res.output
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert last["method"] == "a-shape" and last["ttft_s"] > 0 and "speedup_attention" in last
    assert "median" in res.output


def test_shareprefill_builds_and_caches_a_lookup_for_a_new_model(tmp_path, monkeypatch, tiny_model):
    from sharedattn.analysis.offline.lookup import check_lookup_model, load_lookup

    cache = tmp_path / "cache"  # a cache of its own: no other test has built this model's lookup
    monkeypatch.setenv("SHAREDATTN_CACHE", str(cache))
    first = invoke(*TINY, "-o", tmp_path / "first", "--chunk", "256", "--json")
    assert first.exit_code == 0, first.output
    files = list((cache / "lookups").glob("*.json"))
    assert len(files) == 1, files
    lookup = load_lookup(files[0])  # a valid lookup file, made for this model
    assert lookup.model.model_id == "random:llama-tiny"
    check_lookup_model(lookup, tiny_model.fingerprint)
    assert str(files[0]) in json.loads(first.stdout.strip().splitlines()[-1])["lookup"]
    stamp = files[0].stat().st_mtime_ns, files[0].read_bytes()

    second = invoke(*TINY, "-o", tmp_path / "second", "--json")
    assert second.exit_code == 0, second.output
    assert list((cache / "lookups").glob("*.json")) == files
    assert (files[0].stat().st_mtime_ns, files[0].read_bytes()) == stamp  # read, not rebuilt
    note = json.loads(second.stdout.strip().splitlines()[-1])["lookup"]
    assert "cached lookup" in note and str(files[0]) in note and "no lookup for this model yet" not in second.output


def _other_model_lookup(tmp_path):
    from sharedattn.analysis.files.fingerprint import ModelFingerprint
    from sharedattn.analysis.offline.lookup import Calibration, Lookup, save_lookup

    fp = ModelFingerprint("other", 3, 4, 2, 32, 8192)
    return save_lookup(Lookup(fp, Calibration((), 64, 0.95, "jaccard"), ()), tmp_path / "other.json")


@pytest.mark.parametrize("extra,message", [
    (["--method", "sparse-magic"], "sparse-magic"),
    (["--tau-s", "2"], "tau_s must be in"),
    (["--gamma", "0"], "gamma must be in"),
    (["--block-size", "48"], "block_size must be one of"),
    (["stdlib-code", "stdlib-prose"], "one prompt"),
    (["--chunk", "0"], "--chunk must be positive"),
    (["--kernel", "flash"], "kernel flash: the flash backend needs a CUDA GPU"),
    (["--kernel", "cutlass"], "cutlass"),
    (["ruler-vt:seed=x"], "use ruler-vt:seed=0"),
    (["multikey:needles=2", "--tokens", "99999"], "longer than the model's context"),
])
def test_bad_inputs(tmp_path, extra, message):
    res = invoke(*TINY, *extra, "-o", tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_lookup_for_another_model_names_the_field(tmp_path):
    res = invoke(*TINY, "--lookup", _other_model_lookup(tmp_path), "-o", tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "another model" in res.output and "num_layers" in res.output


def test_out_of_memory_is_one_line(tmp_path, monkeypatch):
    import torch

    from sharedattn.analysis.hf import prefill_run

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")

    monkeypatch.setattr(prefill_run, "run_prefill", boom)
    res = invoke(*TINY, "--method", "dense", "-o", tmp_path / "out")
    assert res.exit_code == 2, res.output
    assert "out of GPU memory prefilling 512 tokens" in res.output and "--chunk" in res.output
