"""Past one GPU: layers on two GPUs (a model sharded with a device map) and data-parallel ranks.

Every launcher runs on its inputs' GPU (kernels/device.py), decision graphs are recorded per GPU,
SharePrefill's sharing state follows the layers from one GPU to the next, and a model sharded over
two GPUs gives what the same weights give on one. Skipped below two CUDA devices.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sharedattn import kernels
from sharedattn.analysis.evaluation.planted import PlantedSpec, Style, planted_cluster_table, planted_layer
from sharedattn.analysis.method.method_config import Decision, MethodName, make_config
from sharedattn.analysis.method.sharing import SharingState
from sharedattn.analysis.method.sparse_prefill import SparsePrefill

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.skipif(GPUS < 2, reason=f"needs two CUDA devices (found {GPUS})")

SPEC = PlantedSpec(heads=8, kv_heads=2, layout=((Style.LOCAL,) * 2 + (Style.VERTICAL,) * 2,
                                                  (Style.SLASH,) * 2 + (Style.RETRIEVAL,) * 2))
N = 4096
SPARSE = [MethodName.A_SHAPE, MethodName.VERTICAL_SLASH, MethodName.FLEXPREFILL, MethodName.SHAREPREFILL]
GPU0, GPU1 = torch.device("cuda:0"), torch.device("cuda:1")


def _runner(method):
    sharing = SharingState(planted_cluster_table(SPEC, 2)) if method is MethodName.SHAREPREFILL else None
    return SparsePrefill(method, make_config(method, dense_below=0), sharing, measure_recall=True, keep_masks=True)


def _layers(runner, layers):
    return [runner.attend(i, q, k, v, q.shape[-1] ** -0.5) for i, (q, k, v) in enumerate(layers)]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-2) -> bool:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12)) < tol


@pytest.fixture(scope="module")
def planted():
    return [planted_layer(SPEC, N, layer, GPU0) for layer in (0, 1)]


@pytest.mark.parametrize("method", SPARSE)
def test_layers_on_two_gpus_decide_as_on_one(planted, method):
    """Layer 0 on GPU 0 and layer 1 on GPU 1 (GPU 0 current throughout): the Triton launches run on
    each layer's GPU, each GPU records its own decision graph, and SharePrefill's layer 1 shares
    from layer 0's pivotals on the other GPU, as when both layers are on GPU 0."""
    torch.cuda.set_device(0)
    split = [planted[0], tuple(t.to(GPU1) for t in planted[1])]
    with kernels.use_backend("triton"):
        want = _layers(_runner(method), planted)
        runner = _runner(method)
        _layers(runner, split)  # records a decision graph on each GPU
        got = _layers(runner, split)  # a second forward pass replays them
    assert torch.cuda.current_device() == 0
    assert got[1][0].device == GPU1
    for (out, trace), (ref, ref_trace) in zip(got, want):
        assert torch.isfinite(out).all() and _close(out, ref)
        assert torch.equal(trace.decision.cpu(), ref_trace.decision.cpu())
        assert torch.equal(trace.source.cpu(), ref_trace.source.cpu())
    assert runner.graph_counts() == (2, 2)  # one graph per GPU (the whole layer), replayed
    if method is MethodName.SHAREPREFILL:
        assert bool((got[0][1].decision == int(Decision.PIVOTAL)).any())
        assert bool((got[1][1].decision == int(Decision.SHARED)).any())  # on GPU 1, from GPU 0's pivotals


@pytest.fixture(scope="module")
def one_and_two():
    """The same random weights (drawn on the CPU) on GPU 0, and split over GPUs 0 and 1 by layer."""
    from accelerate import dispatch_model

    from sharedattn.analysis.hf.models import load_model

    cpu = load_model(random_init="llama-tiny", device="cpu", dtype="bfloat16")
    one = copy.deepcopy(cpu)
    one.model.to(GPU0)
    two = copy.deepcopy(cpu)
    split = {"model.embed_tokens": 0, "lm_head": 0, "model.layers.0": 0, "model.layers.1": 1,
             "model.norm": 1, "model.rotary_emb": 1}
    two.model = dispatch_model(two.model, device_map=split)
    return one, two


def _lookup_across_layers():
    return SimpleNamespace(shared_clusters=[SimpleNamespace(heads=((0, 0), (0, 1), (1, 0), (1, 1))),
                                            SimpleNamespace(heads=((0, 2), (1, 2), (1, 3)))])


@pytest.mark.parametrize("method", list(MethodName))
def test_a_sharded_model_runs_every_method_as_on_one_gpu(one_and_two, method):
    from sharedattn.analysis.hf.prefill_run import run_prefill

    one, two = one_and_two
    assert {p.device for p in two.model.parameters()} == {GPU0, GPU1}
    extra = {"tau_qa": 0.0, "tau_fb": 1.0} if method is MethodName.SHAREPREFILL else {}
    cfg = make_config(method, block_size=64, dense_below=0, min_budget=64, gamma=0.6, **extra)
    lookup = _lookup_across_layers() if method is MethodName.SHAREPREFILL else None
    ids = list(range(300, 1500))
    a, b = (run_prefill(m, ids, method, cfg, lookup, compare_dense=True, max_new_tokens=4) for m in (one, two))
    assert torch.equal(a.trace.decision, b.trace.decision)
    assert _close(b.logits, a.logits) and b.generated[:1] == a.generated[:1]
    assert b.seconds > 0 and all(e < 0.5 for e in b.layer_errors)
    if method is MethodName.SHAREPREFILL:  # layer 1 (GPU 1) shares from layer 0's pivotals (GPU 0)
        assert bool((b.trace.decision[:, 1] == int(Decision.SHARED)).any())


def test_a_sharded_capture_matches_one_gpu(one_and_two):
    from sharedattn.analysis.files.prompts import resolve_prompt
    from sharedattn.analysis.hf.capture import CaptureConfig, capture_prompt

    one, two = one_and_two
    prompt = resolve_prompt("stdlib-code", one.tokenizer, tokens=1024)
    (r1, l1), (r2, l2) = (capture_prompt(m, prompt, CaptureConfig()) for m in (one, two))
    for name in ("block_mass", "vertical", "slash"):
        assert torch.allclose(getattr(r1, name), getattr(r2, name), atol=1e-4), name
    assert _close(l2, l1)


def test_device_map_option_splits_the_layers(tmp_path):
    """`capture --device-map sequential` with GPU 0 capped: the layers spread over both GPUs, and the
    records match the same weights on GPU 0 alone."""
    from typer.testing import CliRunner

    from sharedattn.analysis.files.records import load_record
    from sharedattn_cli.app import app

    base = ["capture", "--random-init", "llama-3.1-8b-shape:2", "stdlib-code", "--tokens", "1024",
            "--device-map", "sequential"]
    split = CliRunner().invoke(app, [*base, "--max-memory", "0=1536MiB,1=60GiB", "-o", str(tmp_path / "two")])
    assert split.exit_code == 0, split.output
    assert "on 0" in split.output and "on 1" in split.output  # the device map line
    whole = CliRunner().invoke(app, [*base, "--max-memory", "0=60GiB", "-o", str(tmp_path / "one")])
    assert whole.exit_code == 0, whole.output
    r1, r2 = (load_record(tmp_path / d / "stdlib-code-1024.json") for d in ("one", "two"))
    assert torch.allclose(r1.block_mass, r2.block_mass, atol=1e-4)


def test_torchrun_ranks_take_one_gpu_each(tmp_path, monkeypatch):
    """The CPU suite's two-rank driver (tests/ranks_driver.py) on two GPUs: rank r computes on GPU r,
    every command succeeds, a failed rank fails both, and the records match one process on GPU 0."""
    from ranks_driver import TINY, invoke, tiny_lookup

    from sharedattn.analysis.files.records import load_record

    driver = Path(__file__).resolve().parents[1] / "ranks_driver.py"
    lookup = tiny_lookup(tmp_path)
    env = {**os.environ, "SHAREDATTN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(driver), str(tmp_path), str(lookup)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["device"] for r in ranks] == [0, 1]
    assert all(r["commands"][name]["exit"] == 0 for r in ranks for name in r["commands"])
    assert [r["failing"]["exit"] for r in ranks] == [2, 2]
    monkeypatch.chdir(tmp_path)
    res = invoke(["capture", *TINY, "stdlib-code", "stdlib-prose", "passkey", "--tokens", "128", "-o", "one"])
    assert res.exit_code == 0, res.output
    for stem in ("stdlib-code-128", "stdlib-prose-128", "passkey_depth_0.5_seed_0-128"):
        a, b = load_record(tmp_path / "one" / f"{stem}.json"), load_record(tmp_path / "ranks" / "records" / stem)
        assert torch.allclose(a.block_mass, b.block_mass, atol=1e-4), stem
