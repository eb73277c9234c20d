"""Data-parallel runs: two gloo ranks under torchrun write exactly what one process writes.

One torchrun launch (tests/ranks_driver.py, about 40 s on two cores, mostly importing torch and
transformers in each rank) runs every command; each test below then runs one command in this process
and compares the files byte for byte (compare's times aside: they differ between any two runs).
"""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ranks_driver import FAILING, INJECTED, commands, invoke, scripted_prune, tiny_lookup

from sharedattn.analysis.files.distributed import RankFailure, World, describe_failures

DRIVER = Path(__file__).resolve().parents[1] / "ranks_driver.py"
TIMES = ("seconds", "attention_seconds")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run the driver on two ranks; returns the work folder, the lookup and each rank's report."""
    work = tmp_path_factory.mktemp("ranks")
    lookup = tiny_lookup(work)
    env = {**os.environ, "SHAREDATTN_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(DRIVER), str(work), str(lookup)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return work, lookup, [json.loads((work / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture()
def one_process(two_ranks, tmp_path, monkeypatch):
    """Run a driver command in this process, in a folder of its own, on one thread (as torchrun's ranks)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _, lookup, ranks = two_ranks

    def run(name: str) -> Path:
        for rank in ranks:
            assert rank["commands"][name]["exit"] == 0, rank["commands"][name]["output"]
        res = invoke(commands(lookup)[name])
        assert res.exit_code == 0, res.output
        return tmp_path

    yield run
    torch.set_num_threads(threads)


def _same_files(ours: Path, theirs: Path, names: list[str]) -> None:
    assert sorted(p.name for p in ours.iterdir()) == sorted(names)
    assert sorted(p.name for p in theirs.iterdir()) == sorted(names)
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_capture_on_two_ranks_writes_the_records_of_one_process(two_ranks, one_process):
    work, _, ranks = two_ranks
    here = one_process("capture")
    names = [f"{stem}-128.{ext}" for stem in ("stdlib-code", "stdlib-prose", "passkey_depth_0.5_seed_0")
             for ext in ("json", "safetensors")]
    _same_files(here / "records", work / "ranks" / "records", names)
    # round-robin: rank 0 captured prompts 0 and 2, rank 1 prompt 1 (then the calibration prompts of cluster)
    assert ranks[0]["captured"][:2] == ["stdlib-code", "passkey:depth=0.5,seed=0"]
    assert ranks[1]["captured"][:1] == ["stdlib-prose"]
    assert ranks[1]["commands"]["capture"]["output"] == ""  # rank 0 prints for everyone


def _without_times(doc):
    if isinstance(doc, dict):
        return {k: _without_times(v) for k, v in doc.items() if k not in TIMES}
    if isinstance(doc, list):
        return [_without_times(v) for v in doc]
    return doc


def _csv_without_times(text: str) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(io.StringIO(text))]


def test_compare_on_two_ranks_writes_the_results_of_one_process(two_ranks, one_process):
    work, _, _ = two_ranks
    here, there = one_process("compare") / "compare", work / "ranks" / "compare"
    names = ["prompts.json", "results.csv", "results.json", "traces.json"]
    assert sorted(p.name for p in there.iterdir()) == sorted(p.name for p in here.iterdir()) == names
    for name in ("prompts.json", "traces.json"):
        assert (here / name).read_bytes() == (there / name).read_bytes(), name
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (here, there))
    assert [(r["prompt"], r["method"]) for r in theirs["rows"]] == [(r["prompt"], r["method"]) for r in ours["rows"]]
    assert len(theirs["rows"]) == 9  # 3 prompts x 3 methods, in the one-process order
    assert _without_times(theirs) == _without_times(ours)
    assert _csv_without_times((there / "results.csv").read_text()) == \
        _csv_without_times((here / "results.csv").read_text())


def test_cluster_prune_on_two_ranks_writes_the_lookup_of_one_process(two_ranks, one_process):
    work, _, _ = two_ranks
    here = one_process("cluster")
    assert (here / "lookup.json").read_bytes() == (work / "ranks" / "lookup.json").read_bytes()
    assert json.loads((here / "lookup.json").read_text())["calibration"]["options"]["pruning"]["prompts"] == 3


def test_pruning_phases_merge_in_prompt_order(two_ranks):
    _, _, ranks = two_ranks
    alone = scripted_prune()
    assert alone["report"]["unshared"] == [1]  # so the kept-clusters phase ran too
    assert ranks[0]["prune"] == alone and ranks[1]["prune"] == alone


def test_a_failed_rank_fails_the_run_in_one_line_and_writes_nothing(two_ranks):
    work, _, ranks = two_ranks
    assert [r["failing"]["exit"] for r in ranks] == [2, 2]
    lines = [line for line in ranks[0]["failing"]["output"].splitlines() if line.strip()]
    error = [line for line in lines if line.startswith("error:")]
    assert error == [f"error: rank 1 of 2 failed: {INJECTED}"], lines
    assert "Traceback" not in ranks[0]["failing"]["output"] and ranks[1]["failing"]["output"] == ""
    assert not (work / "ranks" / FAILING[FAILING.index("-o") + 1]).exists()


def test_commands_that_do_not_split_refuse_torchrun(two_ranks):
    _, _, ranks = two_ranks
    assert [r["one_process_only"]["exit"] for r in ranks] == [2, 2]
    assert "only capture, compare and cluster split" in ranks[0]["one_process_only"]["output"]


# ---- the split and the merge, in one process -------------------------------------------------


def test_world_from_env_and_round_robin_split():
    assert World.from_env({}) == World() and not World().parallel
    world = World.from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank, world.is_main) == (1, 3, 1, False)
    assert list(world.indices(7)) == [1, 4] and world.mine("abcdefg") == [(1, "b"), (4, "e")]
    assert sorted(i for r in range(3) for i in World(r, 3).indices(7)) == list(range(7))


def test_one_process_world_is_the_identity():
    world = World()
    assert world.map([3, 1, 2], lambda i, x: (i, x * 10)) == [(0, 30), (1, 10), (2, 20)]
    assert world.map([3], lambda i, x: x, to_all=True) == [3] and world.share("v") == "v"
    world.check()
    world.finish()
    with pytest.raises(RankFailure, match="boom"):
        world.fail("boom")


def test_merge_checks_every_index_comes_back_once():
    assert World().gather([(1, "b"), (0, "a")], 2) == ["a", "b"]
    with pytest.raises(ValueError, match=r"no result for items \[1\]"):
        World().gather([(0, "a")], 2)
    with pytest.raises(ValueError, match="twice"):
        World().gather([(0, "a"), (0, "a")], 1)


def test_failures_are_one_line_naming_the_ranks():
    from sharedattn.analysis.files.distributed import _Status

    assert describe_failures([_Status(1, "bad prompt")], 2) == "rank 1 of 2 failed: bad prompt"
    assert describe_failures([_Status(0, "x"), _Status(2, "x")], 4) == "ranks 0, 2 of 4 failed: x"
    assert describe_failures([_Status(0, "x"), _Status(1, "y")], 2) == "2 of 2 ranks failed: rank 0: x; rank 1: y"


class _PeerOk(World):
    """Rank 0 of 2 whose peer always reports ok: the status exchange without a process group."""

    def start(self, cuda: bool) -> None:
        pass

    def _exchange_status(self, status) -> None:
        from sharedattn.analysis.files.distributed import _Status

        failed = [s for s in (status, _Status(1)) if s.error is not None]
        if failed:
            raise RankFailure(describe_failures(failed, self.size), all(s.known for s in failed))


def test_an_unexpected_error_on_a_rank_is_one_line_and_exit_1(tmp_path, monkeypatch):
    from sharedattn.analysis.hf import capture

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(World, "from_env", classmethod(lambda cls, environ=None: _PeerOk(0, 2)))
    monkeypatch.setattr(capture, "capture_prompt", boom)
    res = invoke(["capture", "--random-init", "llama-tiny", "stdlib-code", "--tokens", "128",
                  "-o", str(tmp_path / "o")])
    assert res.exit_code == 1  # not a known error: a bug (--debug shows its traceback)
    assert [line for line in res.output.splitlines() if line.startswith("error:")] == \
        ["error: rank 0 of 2 failed: RuntimeError: boom"]
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()
