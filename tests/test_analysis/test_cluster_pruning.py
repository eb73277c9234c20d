"""Pruning a lookup by measured KL: the decision logic (with scripted runs) and the CLI end to end."""
import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.hf import cluster_pruning
from sharedattn.analysis.hf.cluster_pruning import PruneConfig, prune_lookup, with_shared
from sharedattn.analysis.method.method_config import Decision, make_config
from sharedattn.analysis.offline.clustering import HeadCluster
from sharedattn.analysis.offline.lookup import Calibration, Lookup
from sharedattn_cli.app import app

LAYERS, HEADS = 3, 4


def _lookup():
    c = lambda i, heads: HeadCluster(i, tuple(heads), True, 0.9)  # noqa: E731
    clusters = (c(0, [(0, 0), (1, 0), (2, 0)]), c(1, [(0, 1), (1, 1), (2, 1)]), c(2, [(0, 2), (1, 2)]),
                HeadCluster(3, ((0, 3),), False, None))
    model = synthetic_record(num_layers=LAYERS, num_heads=HEADS).meta.model
    return Lookup(model, Calibration((), 64, 0.95, "js", {"distance_threshold": 0.3}), clusters)


class ScriptedRuns:
    """Fake ``run_prefill``/``logit_fidelity``: each shared cluster adds its cost to the KL, and
    shares heads unless it is listed as idle. Records which cluster sets were run."""

    def __init__(self, base, cost, idle=()):
        self.base, self.cost, self.idle, self.runs = base, cost, set(idle), []

    def run(self, loaded, ids, method, config, lookup=None, **_):
        shared = frozenset(c.id for c in lookup.shared_clusters) if lookup is not None else None
        self.runs.append(shared)
        decision = torch.full((1, LAYERS, 1, HEADS), int(Decision.QUERY_AWARE), dtype=torch.int8)
        for c in (lookup.shared_clusters if lookup is not None else ()):
            if c.id not in self.idle:
                for layer, head in c.heads[1:]:
                    decision[0, layer, 0, head] = int(Decision.SHARED)
        return SimpleNamespace(logits=(ids[0], shared), trace=SimpleNamespace(decision=decision))

    def fidelity(self, dense, other):
        prompt, shared = other
        return SimpleNamespace(kl_mean=self.base[prompt] + sum(self.cost[c][prompt] for c in shared))


@pytest.fixture()
def scripted(monkeypatch):
    def make(**kw):
        s = ScriptedRuns(**kw)
        monkeypatch.setattr(cluster_pruning, "run_prefill", s.run)
        monkeypatch.setattr(cluster_pruning, "logit_fidelity", s.fidelity)
        return s
    return make


def test_prunes_the_cluster_that_raises_kl(scripted):
    # prompt 0 base KL 1.0, prompt 1 base 2.0; cluster 1 costs +40%/+10% (mean +25%), cluster 0 +2%/-5%
    s = scripted(base={0: 1.0, 1: 2.0}, cost={0: {0: 0.02, 1: -0.1}, 1: {0: 0.4, 1: 0.2}, 2: {0: 0.0, 1: 0.0}},
                 idle={2})
    method = make_config("shareprefill", block_size=64, dense_below=0)
    pruned, report = prune_lookup(None, [[0], [1]], _lookup(), method, PruneConfig(tolerance=0.05, unshare_idle=False))
    assert report.unshared == (1,)
    assert [c.id for c in pruned.shared_clusters] == [0, 2]
    effects = {e.id: e for e in report.effects}
    assert effects[1].kl_change == pytest.approx(0.25) and effects[0].kl_change == pytest.approx(-0.015)
    assert effects[2].shared_heads == 0 and effects[2].kl_change == 0.0 and effects[2].kept
    assert effects[0].shared_heads == 4  # two non-first heads per prompt
    assert report.kl_none == pytest.approx(1.5) and report.kl_all == pytest.approx(1.5 + 0.26)
    assert report.kl_pruned == pytest.approx(1.5 - 0.04)
    # per prompt: dense, none, all, cluster 0 alone, cluster 1 alone (idle cluster 2 is skipped); then kept
    assert s.runs.count(None) == 2 and s.runs.count(frozenset({2})) == 0
    assert s.runs[-2:] == [frozenset({0, 2})] * 2
    stored = pruned.calibration.options
    assert stored["distance_threshold"] == 0.3 and stored["pruning"]["unshared"] == [1]
    assert stored["pruning"]["method"]["block_size"] == 64 and stored["pruning"]["unshare_idle"] is False


def test_unshares_the_idle_cluster_by_default(scripted):
    """A cluster that shares no head on any prompt costs a dense pivotal head and its map for nothing."""
    s = scripted(base={0: 1.0, 1: 2.0}, cost={0: {0: 0.02, 1: -0.1}, 1: {0: 0.4, 1: 0.2}, 2: {0: 0.0, 1: 0.0}},
                 idle={2})
    method = make_config("shareprefill", block_size=64, dense_below=0)
    pruned, report = prune_lookup(None, [[0], [1]], _lookup(), method)
    assert report.unshared == (1, 2) and [c.id for c in pruned.shared_clusters] == [0]
    assert {e.id: e.kept for e in report.effects} == {0: True, 1: False, 2: False}
    assert s.runs[-2:] == [frozenset({0})] * 2  # KL measured with cluster 0 alone kept
    assert report.kl_pruned == pytest.approx(1.5 - 0.04)
    assert pruned.calibration.options["pruning"]["unshare_idle"] is True


def test_unshare_idle_rereads_an_older_record():
    """A lookup pruned before idle clusters were unshared: its recorded effects suffice."""
    import dataclasses

    from sharedattn.analysis.hf.cluster_pruning import unshare_idle
    from sharedattn.kernels.limits import ConfigError

    lookup = _lookup()
    effects = [{"id": 0, "shared_heads": 4, "kl_change": -0.01, "kept": True},
               {"id": 1, "shared_heads": 2, "kl_change": 0.3, "kept": False},
               {"id": 2, "shared_heads": 0, "kl_change": 0.0, "kept": True}]
    record = {"tolerance": 0.05, "effects": effects, "unshared": [1], "kl_pruned": 0.5}
    old = dataclasses.replace(lookup, calibration=dataclasses.replace(
        lookup.calibration, options={**lookup.calibration.options, "pruning": record}))
    old = with_shared(old, [0, 2])
    new = unshare_idle(old)
    assert [c.id for c in new.shared_clusters] == [0]
    pruning = new.calibration.options["pruning"]
    assert pruning["unshared"] == [1, 2] and pruning["unshare_idle"] is True and pruning["kl_pruned"] is None
    assert [e["kept"] for e in pruning["effects"]] == [True, False, False]
    assert record["unshared"] == [1]  # the old lookup's record is left alone
    with pytest.raises(ConfigError, match="no pruning record"):
        unshare_idle(lookup)


def test_nothing_pruned_reuses_the_all_shared_runs(scripted):
    s = scripted(base={0: 1.0}, cost={0: {0: 0.01}, 1: {0: 0.0}, 2: {0: -0.2}})
    method = make_config("shareprefill", block_size=64, dense_below=0)
    pruned, report = prune_lookup(None, [[0]], _lookup(), method, PruneConfig(tolerance=0.05))
    assert report.unshared == () and report.kl_pruned == report.kl_all
    assert pruned.shared_clusters == _lookup().shared_clusters
    assert len(s.runs) == 6  # dense, none, all, three clusters alone


def test_with_shared_and_config_checks():
    assert [c.id for c in with_shared(_lookup(), [2, 3]).shared_clusters] == [2, 3]
    with pytest.raises(ValueError, match="tolerance"):
        PruneConfig(tolerance=-0.1)
    with pytest.raises(ValueError, match="at least one prompt"):
        prune_lookup(None, [], _lookup(), make_config("shareprefill"))


@pytest.mark.parametrize("keep_idle", [False, True])
def test_cluster_prune_cli_records_the_measurement(tmp_path, keep_idle):
    out = tmp_path / "lookup.json"
    result = CliRunner().invoke(app, ["cluster", "--random-init", "llama-tiny", "stdlib-prose", "--tokens", "512",
                                      "--n-clusters", "2", "--min-similarity", "0", "--prune", "-o", str(out),
                                      *(["--prune-keep-idle"] if keep_idle else [])])
    assert result.exit_code == 0, result.output
    assert "pruning: KL of final logits" in result.output
    data = json.loads(out.read_text())
    pruning = data["calibration"]["options"]["pruning"]
    assert pruning["prompts"] == 1 and pruning["tolerance"] == 0.05 and pruning["unshare_idle"] is not keep_idle
    assert pruning["method"]["dense_below"] == 0 and pruning["kl_none"] >= 0
    shared_before = sum(c["shared"] for c in data["clusters"]) + len(pruning["unshared"])
    assert len(pruning["effects"]) == shared_before
    idle = [e["id"] for e in pruning["effects"] if e["shared_heads"] == 0]
    assert all((cid in pruning["unshared"]) is not keep_idle for cid in idle)


def test_cluster_prune_needs_a_model(tmp_path):
    from sharedattn.analysis.files.records import save_record

    rec = save_record(synthetic_record(num_layers=2, num_heads=4), tmp_path / "r")
    result = CliRunner().invoke(app, ["cluster", "--records", str(rec), "--prune", "-o", str(tmp_path / "l.json")])
    assert result.exit_code == 2 and "--prune-on" in result.output and "--records" in result.output
    other = CliRunner().invoke(app, ["cluster", "--records", str(rec), "--prune-on", "stdlib-prose",
                                     "--random-init", "llama-tiny", "-o", str(tmp_path / "l.json")])
    assert other.exit_code == 2 and "another model" in other.output
    assert not (tmp_path / "l.json").exists()
    empty = CliRunner().invoke(app, ["cluster", "--records", str(rec), "--prune-on", " , ",
                                     "-o", str(tmp_path / "l.json")])
    assert empty.exit_code == 2 and "--prune-on is empty" in empty.output
    bad = CliRunner().invoke(app, ["cluster", "--random-init", "llama-tiny", "stdlib-prose", "--prune",
                                   "--prune-tolerance", "-1", "-o", str(tmp_path / "l.json")])
    assert bad.exit_code == 2 and "tolerance" in bad.output


def test_cluster_from_records_pruned_on_other_prompts(tmp_path):
    runner = CliRunner()
    recs = tmp_path / "recs"
    captured = runner.invoke(app, ["capture", "--random-init", "llama-tiny", "stdlib-code", "--tokens", "512",
                                   "-o", str(recs)])
    assert captured.exit_code == 0, captured.output
    out = tmp_path / "lookup.json"
    result = runner.invoke(app, ["cluster", "--records", str(next(recs.glob("*.json"))), "--n-clusters", "2",
                                 "--min-similarity", "0", "--prune-on", "stdlib-prose,licenses",
                                 "--random-init", "llama-tiny", "--tokens", "512", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["calibration"]["options"]["pruning"]["prompts"] == 2
    assert [p["name"] for p in data["calibration"]["prompts"]] == ["stdlib-code"]
