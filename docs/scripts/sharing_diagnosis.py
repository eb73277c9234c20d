"""Why does a SharePrefill head not share? Per-head reasons, per length, on a real model (GPU).

    python docs/scripts/sharing_diagnosis.py MODEL LOOKUP.json OUT.json [LENGTH ...] [--gamma G ...]
                                             [--mass-split S ...] [--busy] [--map-switch] [--prompt P]
    python docs/scripts/sharing_diagnosis.py --profile MODEL LOOKUP.json LENGTH

For every length: a prompt (``--prompt``: a bundled prompt name such as ``stdlib-code`` or
``passkey:depth=D,seed=S``; default ``passkey:depth=0.3,seed=7``) is prefilled with shareprefill at the
paper's settings (dense_below 0, decision graphs off so the sharing step runs in Python and can
be watched). Each head of each layer gets one reason:

    unclustered   not in a shared cluster of the lookup
    query_aware   FlexPrefill's query-aware test took it first
    pivotal       the cluster's pivotal head (dense + block-mass map)
    same_layer    its cluster's pivotal sits in the same layer (no map yet)
    fallback      the pivotal's own vertical-slash mask covers tau_fb of its mass
    profiles      vertical or slash profile farther than tau_s from the pivotal's
    shared        shares the pivotal pattern

and the per-layer attention time (CUDA events around each layer's attention call) of every method.
Each ``--gamma G`` adds vertical-slash, flexprefill and shareprefill at that gamma to the timed
variants (named ``METHOD@G``; the reasons are watched at the default gamma only). Each
``--mass-split S`` adds shareprefill (and ``shareprefill@G`` for every ``--gamma``) timed with the
pivotal map's rows split every S kept tiles (``kernels.mass_pass.MASS_SPLIT``), named ``...+splitS``.
``--busy`` adds shareprefill (and ``shareprefill@G``) with the lookup's idle clusters unshared
(``cluster_pruning.unshare_idle``: those that shared no head in the all-shared calibration runs of
the lookup's pruning record), named ``shareprefill-busy``; a no-op for lookups pruned since session 11.
``--map-switch`` adds shareprefill (and ``shareprefill@G``) with ``sparse_prefill.SKIP_MAP_UNCLUSTERED``
flipped: named ``...+mapall`` when it is on by default (every SharePrefill layer runs the map and the record),
``...+skipmap`` when it is off (layers without a head in a shared cluster skip them).
"""
from __future__ import annotations

import contextlib
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from sharedattn import kernels
from sharedattn.analysis.files.prompts import bundled_prompt
from sharedattn.analysis.hf import sparse_attention as hf_sparse
from sharedattn.analysis.hf.cluster_pruning import unshare_idle
from sharedattn.analysis.hf.models import load_model
from sharedattn.analysis.hf.prefill_run import logit_fidelity, run_prefill
from sharedattn.analysis.method import sharing as sharing_mod
from sharedattn.analysis.method import sparse_prefill as sp_mod
from sharedattn.analysis.method.method_config import MethodName, make_config
from sharedattn.analysis.method.patterns import js_distance, mass_covered
from sharedattn.analysis.offline.lookup import load_lookup
from sharedattn.kernels import mass_pass

REASONS = ("unclustered", "query_aware", "pivotal", "same_layer", "fallback", "profiles", "shared")


class Watch:
    """Wraps the head decisions (kernels.head_decisions, where the sharing test runs),
    SharingState.record_pivotals and SparsePrefill.attend while active."""

    def __init__(self, watch_sharing: bool = True):
        self.reasons: Counter = Counter()
        self.per_layer: dict[int, Counter] = {}
        self.distances: list[float] = []  # max(d_vertical, d_slash) of heads with an earlier pivotal
        self.pivotal_vs_cover: list[float] = []
        self.layer_events: dict[int, list] = {}
        self._orig = (kernels.head_decisions, sharing_mod.SharingState.record_pivotals,
                      sp_mod.SparsePrefill.attend)
        self.layer = None
        self.watch_sharing = watch_sharing  # False while timing: no host syncs added

    def __enter__(self):
        watch, (decide, record, attend) = self, self._orig

        def attend_timed(obj, layer, q, k, v, scale):
            watch.layer = layer
            if not q.is_cuda:
                return attend(obj, layer, q, k, v, scale)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = attend(obj, layer, q, k, v, scale)
            end.record()
            watch.layer_events.setdefault(layer, []).append((start, end))
            return out

        def decide_watched(vertical, slash, **kw):
            result = decide(vertical, slash, **kw)
            share = kw.get("share")
            capturing = vertical.is_cuda and torch.cuda.is_current_stream_capturing()
            if share is None or not watch.watch_sharing or capturing:
                return result  # recorded into a decision graph: only the eager pass is watched
            watch._classify(share, share.cluster, ~result.qa, vertical, slash, share.tau_s, result)
            return result

        def record_watched(state, cluster, layer, pivotal, block_mass, own_vs_mask, *rest, **kw):
            if watch.watch_sharing and not (pivotal.is_cuda and torch.cuda.is_current_stream_capturing()):
                cover = mass_covered(own_vs_mask, block_mass)[pivotal]  # not while recording a graph
                watch.pivotal_vs_cover += cover.float().cpu().tolist()
            return record(state, cluster, layer, pivotal, block_mass, own_vs_mask, *rest, **kw)

        kernels.head_decisions = decide_watched
        sharing_mod.SharingState.record_pivotals = record_watched
        sp_mod.SparsePrefill.attend = attend_timed
        return self

    def __exit__(self, *exc):
        (kernels.head_decisions, sharing_mod.SharingState.record_pivotals,
         sp_mod.SparsePrefill.attend) = self._orig

    def _classify(self, state, cluster, candidates, v_blocks, s_blocks, tau_s, result):
        b, h = candidates.shape
        in_cluster = (cluster >= 0)[None, :].expand(b, h)
        cid = cluster.clamp(min=0)[None, :].expand(b, h)
        had = state.exists.gather(1, cid) & candidates & in_cluster
        pv = state.v.gather(1, cid[..., None].expand_as(v_blocks))
        ps = state.s.gather(1, cid[..., None].expand_as(s_blocks))
        dist = torch.maximum(js_distance(v_blocks, pv), js_distance(s_blocks, ps))
        fallback = state.vs_enough.gather(1, cid)
        reason = torch.full((b, h), REASONS.index("same_layer"), device=cluster.device)
        reason = torch.where(had & (dist >= tau_s), REASONS.index("profiles"), reason)
        reason = torch.where(had & (dist < tau_s) & fallback, REASONS.index("fallback"), reason)
        reason = torch.where(result.shared, REASONS.index("shared"), reason)
        reason = torch.where(result.pivotal, REASONS.index("pivotal"), reason)
        reason = torch.where(~candidates, REASONS.index("query_aware"), reason)
        reason = torch.where(~in_cluster, REASONS.index("unclustered"), reason)
        counts = Counter(REASONS[i] for i in reason.flatten().tolist())
        self.reasons.update(counts)
        self.per_layer.setdefault(self.layer, Counter()).update(counts)
        self.distances += dist[had].float().cpu().tolist()

    def layer_ms(self) -> dict[int, float]:
        if self.layer_events:
            torch.cuda.synchronize()
        return {layer: statistics.median(a.elapsed_time(b) for a, b in pairs)
                for layer, pairs in sorted(self.layer_events.items())}


def _timed(loaded, ids, method, config, lookup, repeats=3):
    runs = [run_prefill(loaded, ids, method, config, lookup) for _ in range(repeats + 1)][1:]
    return runs, statistics.median(r.seconds for r in runs), statistics.median(r.attention_seconds for r in runs)


DEFAULT_PROMPT = "passkey:depth=0.3,seed=7"  # the prompt of every diagnosis in docs/ before session 12
# name, method, config fields: the paper's fallback and ours (docs/method.md, step 4)
VARIANTS = (("vertical-slash", "vertical-slash", {}), ("flexprefill", "flexprefill", {}),
            ("shareprefill", "shareprefill", {}),
            ("shareprefill-sparser", "shareprefill", {"fallback": "covers-and-sparser"}))


class _Setting:
    """``module.name`` set to ``value`` (None: left alone) while active (``mass_pass.MASS_SPLIT``,
    ``sparse_prefill.SKIP_MAP_UNCLUSTERED``). The prefill runners and the graphs they recorded are
    dropped on the way in and out: a replayed graph keeps what it was recorded with."""

    def __init__(self, module, name: str, value):
        self.module, self.name, self.value, self.saved = module, name, value, getattr(module, name)

    def __enter__(self):
        if self.value is not None:
            hf_sparse._RUNNERS.clear()
            setattr(self.module, self.name, self.value)

    def __exit__(self, *exc):
        if self.value is not None:
            setattr(self.module, self.name, self.saved)
            hf_sparse._RUNNERS.clear()


def diagnose(model: str, lookup_path: str, lengths: list[int], gammas: tuple[float, ...] = (),
             mass_splits: tuple[int, ...] = (), busy: bool = False, map_switch: bool = False,
             prompt_name: str = DEFAULT_PROMPT) -> list[dict]:
    random_init = model[len("random:"):] if model.startswith("random:") else None
    loaded = load_model(model if random_init is None else None, random_init=random_init)
    reference = None
    if next(loaded.model.parameters()).is_cuda and random_init is None:
        reference = load_model(model, dtype="float32")
    lookup = load_lookup(Path(lookup_path))
    busy_lk = unshare_idle(lookup) if busy else None
    if busy_lk is not None:
        kept = len(busy_lk.shared_clusters)
        print(f"--busy: {kept} of {len(lookup.shared_clusters)} shared clusters kept", flush=True)
    rows = []
    for n in lengths:
        ids = bundled_prompt(prompt_name, loaded.tokenizer, n).input_ids
        dense_cfg = make_config("dense")
        dense_runs, dense_ttft, dense_attn = _timed(loaded, ids, MethodName.DENSE, dense_cfg, None)
        row = {"tokens": len(ids), "prompt": prompt_name,
               "dense": {"ttft_ms": dense_ttft * 1e3, "attention_ms": dense_attn * 1e3}}
        extra_gammas = [(f"{m}@{g}", m, {"gamma": g}) for g in gammas
                         for m in ("vertical-slash", "flexprefill", "shareprefill")]
        share_runs = (("shareprefill", {}), *((f"shareprefill@{g}", {"gamma": g}) for g in gammas))
        split_runs = [(f"{name}+split{split}", "shareprefill", extra, _Setting(mass_pass, "MASS_SPLIT", split))
                      for split in mass_splits for name, extra in share_runs]
        flipped = not sp_mod.SKIP_MAP_UNCLUSTERED
        skip_runs = [(f"{name}+{'skipmap' if flipped else 'mapall'}", "shareprefill", extra,
                      _Setting(sp_mod, "SKIP_MAP_UNCLUSTERED", flipped))
                     for name, extra in share_runs] if map_switch else []
        busy_runs = [(name, "shareprefill", extra, None) for name, extra in (
            ("shareprefill-busy", {}), *((f"shareprefill-busy@{g}", {"gamma": g}) for g in gammas))] if busy else []
        timed = [(*v, None) for v in (*VARIANTS, *extra_gammas)] + split_runs + skip_runs + busy_runs
        for name, method, extra, setting in timed:
            cfg = make_config(method, dense_below=0, **extra)
            lk = (busy_lk if name.startswith("shareprefill-busy") else lookup) if method == "shareprefill" else None
            with setting or contextlib.nullcontext(), Watch(watch_sharing=False) as timing:
                runs, ttft, attn = _timed(loaded, ids, MethodName(method), cfg, lk)
            fid = logit_fidelity(dense_runs[-1].logits, runs[-1].logits)
            row[name] = {"ttft_ms": ttft * 1e3, "attention_ms": attn * 1e3,
                           "density": runs[-1].trace.overall_density(),
                           "decisions": runs[-1].trace.decision_shares(),
                           "fidelity": {k: v for k, v in vars(fid).items() if isinstance(v, (int, float))},
                           "per_layer_density": runs[-1].trace.per_layer_density(),
                           "layer_ms": timing.layer_ms()}
        for name, _, extra in VARIANTS[2:]:  # eager decision step, so the sharing test runs in Python
            with Watch() as watch:
                run_prefill(loaded, ids, MethodName.SHAREPREFILL, make_config("shareprefill", dense_below=0, **extra),
                            lookup, use_graphs=False)
            total = sum(watch.reasons.values())
            row[name]["reasons"] = {r: watch.reasons[r] / total for r in REASONS}
            row[name]["reasons_per_layer"] = {layer: dict(c) for layer, c in sorted(watch.per_layer.items())}
            row[name]["distance_quartiles"] = _quartiles(watch.distances)
            row[name]["pivotal_vs_cover_quartiles"] = _quartiles(watch.pivotal_vs_cover)
        if reference is not None and len(ids) <= 16384:  # noise floor: dense bf16 vs fp32 (fp32 SDPA is N^2 memory)
            fp32 = run_prefill(reference, ids, MethodName.DENSE, dense_cfg, None)
            row["noise_floor"] = {k: v for k, v in vars(logit_fidelity(fp32.logits, dense_runs[-1].logits)).items()
                                  if isinstance(v, (int, float))}
        rows.append(row)
        print(json.dumps({"tokens": row["tokens"], "noise_floor": row.get("noise_floor"),
                          **{name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row[name].items()
                                    if k in ("ttft_ms", "attention_ms", "density", "reasons", "fidelity")}
                             for name in ["dense", *(v[0] for v in timed)]}}), flush=True)
    return rows


def _quartiles(values: list[float]) -> list[float] | None:
    if len(values) < 4:
        return values or None
    return [round(q, 4) for q in statistics.quantiles(values, n=4)]


def profile(model: str, lookup_path: str, n: int) -> None:
    """One shareprefill prefill under torch.profiler: where the time of pivotal layers goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    loaded = load_model(model)
    lookup = load_lookup(Path(lookup_path))
    ids = bundled_prompt(DEFAULT_PROMPT, loaded.tokenizer, n).input_ids
    cfg = make_config("shareprefill", dense_below=0)
    for _ in range(2):
        run_prefill(loaded, ids, MethodName.SHAREPREFILL, cfg, lookup)
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_prefill(loaded, ids, MethodName.SHAREPREFILL, cfg, lookup)
    events = prof.key_averages()
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    if sys.argv[1] == "--profile":
        profile(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    args, options = sys.argv[1:], {"--gamma": [], "--mass-split": [], "--prompt": []}
    busy, map_switch = "--busy" in args, "--map-switch" in args
    args = [a for a in args if a not in ("--busy", "--map-switch")]
    for flag, values in options.items():
        while flag in args:
            i = args.index(flag)
            values.append(args[i + 1])
            del args[i:i + 2]
    model_name, lookup_file, out_file, *lens = args
    result = diagnose(model_name, lookup_file, [int(n) for n in lens] or [8192, 16384, 32000],
                      tuple(float(g) for g in options["--gamma"]), tuple(int(s) for s in options["--mass-split"]),
                      busy, map_switch, (options["--prompt"] or [DEFAULT_PROMPT])[-1])
    Path(out_file).write_text(json.dumps(result, indent=1) + "\n")
