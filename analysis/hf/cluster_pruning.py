"""Prune a lookup by measured fidelity: stop sharing the clusters whose sharing raises logit KL.

Similarity says which heads look alike; it does not say that giving one head's exact pattern to
the others keeps the model's output. ``prune_lookup`` measures that on the calibration prompts.
For each prompt it runs dense once, then SharePrefill with no cluster shared, with every cluster
shared, and with each cluster that shared a head in the all-shared run on its own. A cluster whose
sharing raises KL(dense || run) over the last positions by more than ``tolerance`` (relative to
no sharing, averaged over the prompts) is marked not shared. A cluster that shared no head on a
prompt counts as no change there (its run would differ from "none" only through earlier layers),
which keeps the cost at a few runs per prompt. A cluster that shared no head on any prompt is
unshared too (``unshare_idle``, the default): its pivotal head would run dense and pay the block-mass
map in every forward pass while lending its pattern to nobody (on Qwen2.5-Coder-0.5B at 32K, 25 of
29 clusters were idle, and unsharing them made SharePrefill 1.22x faster in attention at a lower KL;
docs/benchmarks.md, "Qwen2.5-Coder-0.5B after session 11"). The result is written into the lookup's
calibration options, so the file says how it was chosen.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from ...kernels.limits import ConfigError
from ..files.distributed import World
from ..method.method_config import Decision, MethodName, SharePrefillConfig, make_config
from ..offline.lookup import Lookup
from .models import LoadedModel
from .prefill_run import logit_fidelity, run_prefill


@dataclass(frozen=True)
class PruneConfig:
    tolerance: float = 0.05  # a cluster may raise KL by this share of the no-sharing KL
    positions: int = 256  # last positions whose next-token distributions are compared
    unshare_idle: bool = True  # unshare the clusters that shared no head on any prompt

    def __post_init__(self):
        if not self.tolerance >= 0:
            raise ConfigError(f"prune tolerance must be >= 0, got {self.tolerance}")
        if self.positions < 1:
            raise ConfigError(f"prune positions must be >= 1, got {self.positions}")


@dataclass(frozen=True)
class ClusterEffect:
    id: int
    shared_heads: int  # heads with a 'shared' decision in the all-shared runs, summed over prompts
    kl_change: float  # mean over prompts of (KL(only this cluster) - KL(none)) / KL(none)
    kept: bool


@dataclass(frozen=True)
class PruneReport:
    config: PruneConfig
    method: dict  # the SharePrefill parameters of every run
    prompts: int
    kl_none: float  # mean KL over the prompts with no cluster shared
    kl_all: float  # ... with every similarity-chosen cluster shared
    kl_pruned: float  # ... with the clusters kept here
    effects: tuple[ClusterEffect, ...]

    @property
    def unshared(self) -> tuple[int, ...]:
        return tuple(e.id for e in self.effects if not e.kept)

    def to_json(self) -> dict:
        return {"tolerance": self.config.tolerance, "positions": self.config.positions,
                "unshare_idle": self.config.unshare_idle, "method": self.method, "prompts": self.prompts,
                "kl_none": self.kl_none, "kl_all": self.kl_all, "kl_pruned": self.kl_pruned,
                "unshared": list(self.unshared),
                "effects": [dataclasses.asdict(e) for e in self.effects]}


def _kept(kl_change: float, shared_heads: int, config: PruneConfig) -> bool:
    return kl_change <= config.tolerance and (shared_heads > 0 or not config.unshare_idle)


def unshare_idle(lookup: Lookup) -> Lookup:
    """``lookup`` with the clusters its own pruning record saw share no head unshared, the record
    updated to say so: for a lookup pruned before ``unshare_idle`` existed (its measured effects
    suffice; ``kl_pruned`` was measured for the old set and is dropped)."""
    record = lookup.calibration.options.get("pruning") or {}
    effects = record.get("effects")
    if not effects:
        raise ConfigError("the lookup has no pruning record with effects (calibration.options.pruning)")
    effects = [dict(e, kept=bool(e["kept"]) and e["shared_heads"] > 0) for e in effects]
    kept = [e["id"] for e in effects if e["kept"]]
    record = {**record, "unshare_idle": True, "effects": effects, "kl_pruned": None,
              "unshared": [e["id"] for e in effects if not e["kept"]]}
    options = {**lookup.calibration.options, "pruning": record}
    pruned = with_shared(lookup, kept)
    return dataclasses.replace(pruned, calibration=dataclasses.replace(lookup.calibration, options=options))


def with_shared(lookup: Lookup, ids) -> Lookup:
    """``lookup`` with exactly the clusters in ``ids`` shared."""
    keep = set(ids)
    clusters = tuple(dataclasses.replace(c, shared=c.id in keep) for c in lookup.clusters)
    return dataclasses.replace(lookup, clusters=clusters)


def shared_head_counts(trace, lookup: Lookup) -> dict[int, int]:
    """Per shared cluster: how many of its (chunk, batch, layer, head) decisions were 'shared'."""
    shared = (trace.decision == int(Decision.SHARED)).sum(dim=(0, 2))  # [L, H]
    return {c.id: int(sum(int(shared[layer, head]) for layer, head in c.heads)) for c in lookup.shared_clusters}


def prune_lookup(loaded: LoadedModel, prompts: list, lookup: Lookup, method: SharePrefillConfig,
                 config: PruneConfig = PruneConfig(),
                 progress: Callable[[str], None] = lambda _msg: None,
                 world: World | None = None) -> tuple[Lookup, PruneReport]:
    """Measure each shared cluster's effect on ``prompts`` (token-id lists); unshare the costly ones.

    ``world`` (default one process): under torchrun each rank measures its share of the prompts and
    every rank gets the same pruned lookup and report as one process (sums taken in prompt order)."""
    if not prompts:
        raise ValueError("pruning needs at least one prompt")
    world = world or World()
    n = len(prompts)
    candidates = [c.id for c in lookup.shared_clusters]
    dense_config = make_config(MethodName.DENSE, block_size=method.block_size)
    dense_logits: dict[int, object] = {}  # this rank's prompts: dense logits, for the kept-clusters runs

    def kl(ids, shared, dense, what):
        progress(what)
        run = run_prefill(loaded, ids, MethodName.SHAREPREFILL, method, with_shared(lookup, shared),
                          eval_positions=config.positions)
        return logit_fidelity(dense, run.logits).kl_mean, run.trace

    def measure(i: int, ids) -> tuple[float, float, dict[int, int], dict[int, float]]:
        """One prompt: KL with no cluster and every cluster shared, shared heads and KL change per cluster."""
        tag = f"prompt {i + 1}/{n}"
        progress(f"{tag}: dense")
        dense = run_prefill(loaded, ids, MethodName.DENSE, dense_config, eval_positions=config.positions).logits
        dense_logits[i] = dense
        kl_none, _ = kl(ids, (), dense, f"{tag}: no cluster shared")
        kl_all, trace = kl(ids, candidates, dense, f"{tag}: every cluster shared")
        counts = shared_head_counts(trace, lookup)
        changes = {cid: (kl(ids, (cid,), dense, f"{tag}: cluster {cid} alone")[0] - kl_none) / max(kl_none, 1e-12)
                   for cid, count in counts.items() if count}
        return kl_none, kl_all, counts, changes

    sums = {"none": 0.0, "all": 0.0}
    change = {cid: 0.0 for cid in candidates}
    heads = {cid: 0 for cid in candidates}
    for kl_none, kl_all, counts, changes in world.map(prompts, measure, to_all=True):  # in prompt order
        sums["none"] += kl_none
        sums["all"] += kl_all
        for cid, count in counts.items():
            heads[cid] += count
            if count:
                change[cid] += changes[cid]
    effects = tuple(ClusterEffect(cid, heads[cid], change[cid] / n, _kept(change[cid] / n, heads[cid], config))
                    for cid in candidates)
    kept = [e.id for e in effects if e.kept]
    if len(kept) == len(candidates):
        kl_pruned = sums["all"] / n
    else:
        kl_pruned = sum(world.map(prompts, lambda i, ids: kl(ids, kept, dense_logits[i],
                                                             f"prompt {i + 1}/{n}: clusters kept")[0],
                                  to_all=True)) / n
    report = PruneReport(config, method.to_json(), n, sums["none"] / n, sums["all"] / n, kl_pruned, effects)
    pruned = with_shared(lookup, kept)
    options = {**lookup.calibration.options, "pruning": report.to_json()}
    pruned = dataclasses.replace(pruned, calibration=dataclasses.replace(lookup.calibration, options=options))
    return pruned, report
