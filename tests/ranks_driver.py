"""Commands run under torchrun by tests/test_cli/test_ranks.py, and the one-process twin of each.

`python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ranks_driver.py WORK LOOKUP` runs,
on each rank, in one process (so torch and transformers are imported once per rank, not once per command):
capture, compare and cluster --prune on a tiny random model, SharePrefill pruning with scripted runs
(no model: the merge of both pruning phases), a capture in which rank 1 fails, and a command that does
not split over ranks. Outputs go under WORK/ranks (relative ``-o`` paths, the same strings as the
one-process run's), and each rank writes WORK/rank<r>.json: every command's exit code and output, and
the prompts each rank captured, and its current CUDA device (None on the CPU).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

TINY = ["--random-init", "llama-tiny"]


def commands(lookup: Path) -> dict[str, list[str]]:
    """The commands whose outputs must not depend on the number of ranks (name -> arguments)."""
    return {
        "capture": ["capture", *TINY, "stdlib-code", "stdlib-prose", "passkey", "--tokens", "128", "-o", "records"],
        "compare": ["compare", *TINY, "stdlib-code", "--tokens", "256", "--passkey-lengths", "256",
                    "--passkey-depths", "0,1", "--methods", "dense,vertical-slash,shareprefill", "--lookup",
                    str(lookup), "--min-budget", "64", "--eval-positions", "16", "--max-new-tokens", "2",
                    "--no-figures", "-o", "compare"],
        "cluster": ["cluster", *TINY, "stdlib-prose", "stdlib-code", "passkey", "--tokens", "256",
                    "--n-clusters", "2", "--min-similarity", "0", "--prune", "-o", "lookup.json"],
    }


def tiny_lookup(folder: Path) -> Path:
    """A lookup for llama-tiny with one shared cluster across its two layers (for compare's shareprefill)."""
    from sharedattn.analysis.files.fingerprint import ModelFingerprint
    from sharedattn.analysis.offline.clustering import HeadCluster
    from sharedattn.analysis.offline.lookup import Calibration, Lookup, save_lookup

    fp = ModelFingerprint("random:llama-tiny", 2, 4, 2, 32, 8192)
    cluster = HeadCluster(0, ((0, 0), (1, 0), (1, 1)), True, 0.8)
    return save_lookup(Lookup(fp, Calibration((), 64, 0.95, "jaccard"), (cluster,)), folder / "tiny-lookup.json")


FAILING = ["capture", *TINY, "stdlib-code", "stdlib-prose", "--tokens", "128", "-o", "failed"]
INJECTED = "stdlib-prose: cannot be read (injected on rank 1)"


def invoke(args: list[str]):
    """Run the app as `sharedattn ARGS` would (sys.argv is what compare records as its command)."""
    from typer.testing import CliRunner

    from sharedattn_cli.app import app

    argv = sys.argv
    sys.argv = ["sharedattn", *args]
    try:
        return CliRunner().invoke(app, args)
    finally:
        sys.argv = argv


# ---- pruning with scripted runs: each shared cluster adds its cost to the KL --------------------

PRUNE_COST = {0: (0.02, -0.1, 0.0), 1: (0.4, 0.2, 0.3), 2: (0.0, 0.01, 0.0)}  # cluster -> cost per prompt
PRUNE_BASE = (1.0, 2.0, 0.5)  # KL with no cluster shared, per prompt


def scripted_prune(world=None):
    """``prune_lookup`` on three prompts with scripted runs: cluster 1 is unshared, so both phases run."""
    import torch

    from sharedattn.analysis.evaluation.synthetic import synthetic_record
    from sharedattn.analysis.hf import cluster_pruning
    from sharedattn.analysis.method.method_config import Decision, make_config
    from sharedattn.analysis.offline.clustering import HeadCluster
    from sharedattn.analysis.offline.lookup import Calibration, Lookup

    clusters = (HeadCluster(0, ((0, 0), (1, 0), (2, 0)), True, 0.9), HeadCluster(1, ((0, 1), (1, 1)), True, 0.9),
                HeadCluster(2, ((1, 2), (2, 2)), True, 0.9), HeadCluster(3, ((0, 3),), False, None))
    lookup = Lookup(synthetic_record(num_layers=3, num_heads=4).meta.model,
                    Calibration((), 64, 0.95, "js"), clusters)

    def run(loaded, ids, method, config, shared_lookup=None, **_):
        shared = tuple(c.id for c in shared_lookup.shared_clusters) if shared_lookup is not None else None
        decision = torch.full((1, 3, 1, 4), int(Decision.QUERY_AWARE), dtype=torch.int8)
        for c in (shared_lookup.shared_clusters if shared_lookup is not None else ()):
            for layer, head in c.heads[1:]:
                decision[0, layer, 0, head] = int(Decision.SHARED)
        return SimpleNamespace(logits=(ids[0], shared), trace=SimpleNamespace(decision=decision))

    def fidelity(dense, other):
        prompt, shared = other
        return SimpleNamespace(kl_mean=PRUNE_BASE[prompt] + sum(PRUNE_COST[c][prompt] for c in shared))

    saved = cluster_pruning.run_prefill, cluster_pruning.logit_fidelity
    cluster_pruning.run_prefill, cluster_pruning.logit_fidelity = run, fidelity
    try:
        method = make_config("shareprefill", block_size=64, dense_below=0)
        pruned, report = cluster_pruning.prune_lookup(None, [[0], [1], [2]], lookup, method, world=world)
    finally:
        cluster_pruning.run_prefill, cluster_pruning.logit_fidelity = saved
    return {"lookup": pruned.to_json(), "report": report.to_json()}


def _failing_capture(rank: int):
    """The capture of FAILING, with rank 1's capture raising a known error."""
    from sharedattn.analysis.files.prompts import PromptError
    from sharedattn.analysis.hf import capture

    def broken(*_args, **_kwargs):
        raise PromptError(INJECTED)

    saved = capture.capture_prompt
    if rank == 1:
        capture.capture_prompt = broken
    try:
        return invoke(FAILING)
    finally:
        capture.capture_prompt = saved


def _captured_prompts() -> list[str]:
    """Record which prompts this rank captures (wraps capture_prompt)."""
    from sharedattn.analysis.hf import capture

    seen: list[str] = []
    inner = capture.capture_prompt

    def spy(loaded, prompt, *args, **kwargs):
        seen.append(prompt.name)
        return inner(loaded, prompt, *args, **kwargs)

    capture.capture_prompt = spy
    return seen


def main(work: Path, lookup: Path) -> None:
    from sharedattn.analysis.files.distributed import World

    rank = int(os.environ["RANK"])
    (work / "ranks").mkdir(exist_ok=True)
    os.chdir(work / "ranks")
    out: dict = {"commands": {}}
    seen = _captured_prompts()
    for name, args in commands(lookup).items():
        res = invoke(args)
        out["commands"][name] = {"exit": res.exit_code, "output": res.output}
    out["captured"] = list(seen)
    out["prune"] = scripted_prune(World.from_env())
    res = _failing_capture(rank)
    out["failing"] = {"exit": res.exit_code, "output": res.output}
    res = invoke(["prompts", "list"])
    out["one_process_only"] = {"exit": res.exit_code, "output": res.output}
    import torch

    out["device"] = torch.cuda.current_device() if torch.cuda.is_available() else None
    (work / f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
