"""One sparse layer's cost at 4K-32K for every method, against dense cuDNN (issue 17's profile).

    python docs/scripts/layer_profile.py OUT.json [N ...] [--host] [--synced] [--in-graph] [--rounds=R]
                                                          (default: 4096 8192 16384 32768)

Planted Llama-3.1-8B-shape layers (analysis/evaluation/planted.py: B=1, 32 query heads, 8 KV
heads, head dim 128, bf16, block 128), paper defaults, ``dense_below=0``. Per length and method:

* ``wall``: ``SparsePrefill.attend`` from the host's call to the GPU's end (decision graphs
  recorded first; median of CUDA-event-timed repeats, ``kernels.bench.time_ms``, three times, their
  median). With ``--rounds=R`` every row of a length is timed R times in turn, all rows once per
  round, and keeps its smallest: at 4K a layer is bound by the host and one row's wall time swung by
  up to 50% between two runs (session 10), so rows are compared within one round-robin, not one
  after the other;
* ``gpu busy`` and ``kernels``: the GPU time and the number of kernels of one layer under
  torch.profiler (kernels replayed inside CUDA graphs included);
* ``kernel_names`` (JSON only): each kernel of that profiled layer with its launches and GPU ms,
  most launched first: where the kernel count of the fixed cost comes from;
* ``attention``: the GPU time of the attention itself (the sparse kernel, the pivotal block-mass
  pass, or dense SDPA where a layer keeps every block);
* ``fixed`` = wall - attention: what the layer pays beyond the attention it computes (host work,
  launches, the decision step, the sync);
* ``--host``: also the CPU time of the layer's parts in the profiled call (the decision step's
  graph replay, the kernel step after the sync, the layout, the attention call, the pivotal
  record), each wrapped in a profiler range. The wrappers cost host time themselves (measured
  on the H200: +0.1-0.2 ms a layer at 4K), so the other columns come from a run without it.

``--synced``: every row twice, ``mode`` ``whole`` (the default since session 8: the layer as one
recorded step, no host sync) and ``synced`` (``whole_layer=False``: the decision graph, one host
sync, then the kernel), side by side in one process. Trees without ``whole_layer`` run ``synced``.

``--in-graph`` (trees since session 10): every row also as ``attn-after`` and ``attn-in``, the whole
layer with its attention after the recorded decision step or inside it for every method
(``sparse_prefill.ATTENTION_IN_GRAPH_BELOW`` set around each call; ``whole`` is the tree's own rule).

SharePrefill is timed on layer 0 (``pivotal``: each cluster's first head runs dense and records
its map) and on layer 1 (``shared``: every repeat continues the pass that ran layer 0).

The script also runs on older trees of the package (module paths before analysis/ was split into
packages), so one device call can profile the code before and after a change: put the old tree's
``kernels`` and ``analysis`` under a ``sharedattn`` folder first on PYTHONPATH.
"""
from __future__ import annotations

import functools
import itertools
import json
import platform
import statistics
import sys
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from sharedattn.kernels.bench import time_ms

try:  # the tree since the analysis packages
    from sharedattn.analysis.evaluation.planted import PlantedSpec, planted_cluster_table, planted_layer
    from sharedattn.analysis.method.method_config import MethodName, make_config
    from sharedattn.analysis.method.sharing import SharingState
    from sharedattn.analysis.method.sparse_prefill import SparsePrefill
except ImportError:  # the flat analysis/ of session 4
    from sharedattn.analysis.method_config import MethodName, make_config
    from sharedattn.analysis.planted import PlantedSpec, planted_cluster_table, planted_layer
    from sharedattn.analysis.sharing import SharingState
    from sharedattn.analysis.sparse_prefill import SparsePrefill

# host time of one layer by part (CPU time of these calls inside the profiled layer; only the
# parts the tree has): module path, owner, attribute
HOST_PARTS = (("analysis.method.decision_graphs", "DecisionGraphs", "run"),
              ("analysis.method.sparse_prefill", "SparsePrefill", "_run"),
              ("analysis.method.sparse_prefill", "SparsePrefill", "_run_whole"),
              ("kernels.layout", "LayoutDraft", "finish"),
              ("kernels.backend", None, "sparse_attention"),
              ("analysis.method.sparse_prefill", "SparsePrefill", "_record_pivotals"))
ATTENTION_KERNELS = ("attn_fwd", "block_mass_kernel", "cudnn", "fmha", "flash", "sdpa")
ROWS = (("a-shape", "any"), ("vertical-slash", "any"), ("flexprefill", "any"), ("shareprefill", "pivotal"),
        ("shareprefill", "shared"))


def _dense(q, k, v, scale):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _dense_ms(q, k, v, scale) -> float:
    """cuDNN on K/V expanded to the query heads beforehand (the expansion is not timed)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return time_ms(lambda: _dense(q, k, v, scale))


def _label_host_parts() -> None:
    """Wrap the layer's host-side parts in profiler ranges named ``@part``."""
    import importlib

    for module, owner, name in HOST_PARTS:
        try:
            mod = importlib.import_module(f"sharedattn.{module}")
        except ImportError:
            continue
        target = getattr(mod, owner, None) if owner else mod
        fn = getattr(target, name, None) if target is not None else None
        if fn is None:
            continue

        def wrapped(*a, _fn=fn, _label=f"@{owner + '.' if owner else ''}{name}", **kw):
            with record_function(_label):
                return _fn(*a, **kw)
        setattr(target, name, functools.wraps(fn)(wrapped))
        if owner is None:  # the package's lazily cached name too
            from sharedattn import kernels
            if name in vars(kernels):
                setattr(kernels, name, getattr(target, name))


def _profiled(fn) -> dict:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    gpu = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0
           and not e.name.startswith("@")]  # kernels, not the ranges' own GPU-side spans
    busy = sum(e.device_time for e in gpu) / 1000
    attention = sum(e.device_time for e in gpu if any(a in e.name.lower() for a in ATTENTION_KERNELS)) / 1000
    host: dict[str, float] = {}
    for e in prof.events():
        if e.name.startswith("@") and e.device_type == torch.autograd.DeviceType.CPU:
            host[e.name[1:]] = host.get(e.name[1:], 0.0) + e.cpu_time_total / 1000
    by_name: dict[str, list] = {}  # kernel name -> [launches, GPU ms]: what the fixed cost is made of
    for e in gpu:
        entry = by_name.setdefault(e.name[:120], [0, 0.0])
        entry[0] += 1
        entry[1] += e.device_time / 1000
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    return {"gpu_busy_ms": busy, "attention_ms": attention, "kernels": len(gpu), "host_ms": host,
            "kernel_names": [[name, n, round(ms, 4)] for name, (n, ms) in ranked]}


def _runner(method: MethodName, cfg, sharing, whole: bool):
    try:
        return SparsePrefill(method, cfg, sharing, whole_layer=whole)
    except TypeError:  # a tree from before the whole-layer step: always synced
        return SparsePrefill(method, cfg, sharing)


def _layer_call(method: str, layer: str, spec, layers, scale, whole: bool = True):
    cfg = make_config(method, dense_below=0)
    sharing = SharingState(planted_cluster_table(spec, 2)) if method == "shareprefill" else None
    runner = _runner(MethodName(method), cfg, sharing, whole)
    (q0, k0, v0), (q1, k1, v1) = layers
    if layer != "shared":
        return lambda: runner.attend(0, q0, k0, v0, scale)
    runner.attend(0, q0, k0, v0, scale)

    def shared():
        if hasattr(runner, "continue_after"):  # since session 7 a repeated layer number starts a new pass
            runner.continue_after(0)
        return runner.attend(1, q1, k1, v1, scale)
    return shared


def _attention_placed(call, where: str):
    """``call`` with every method's attention after its layer graph (``after``) or inside it (``in``)."""
    from sharedattn.analysis.method import sparse_prefill

    rule = {} if where == "after" else {m: 1 << 40 for m in MethodName}

    def placed():
        with mock.patch.object(sparse_prefill, "ATTENTION_IN_GRAPH_BELOW", rule):
            return call()
    return placed


def _modes(synced: bool, in_graph: bool) -> tuple[str, ...]:
    return ("whole",) + (("synced",) if synced else ()) + (("attn-after", "attn-in") if in_graph else ())


def _call_for(method, layer, mode, spec, layers, scale):
    call = _layer_call(method, layer, spec, layers, scale, whole=mode != "synced")
    return _attention_placed(call, mode[len("attn-"):]) if mode.startswith("attn-") else call


def main(out: str, lengths: list[int], host: bool = False, synced: bool = False, rounds: int = 0,
         in_graph: bool = False) -> None:
    if host:
        _label_host_parts()
    spec = PlantedSpec()
    scale = spec.head_dim ** -0.5
    command = "python docs/scripts/layer_profile.py " + " ".join(sys.argv[1:])
    machine = f"{torch.cuda.get_device_name()} (torch {torch.version.__version__}, {platform.node()})"
    print(command, "\n", machine, sep="")
    rows = []
    for n in lengths:
        layers = [planted_layer(spec, n, layer, "cuda") for layer in (0, 1)]
        dense_ms = _dense_ms(*layers[0], scale)
        print(f"\nN={n}: dense cuDNN {dense_ms:.3f} ms")
        print(f"{'method':<16}{'layer':<9}{'mode':<11}{'wall':>8}{'fixed':>8}{'attn':>8}{'busy':>8}"
              f"{'kernels':>9}{'x dense':>9}")
        kinds = list(itertools.product(ROWS, _modes(synced, in_graph)))
        calls = [_call_for(method, layer, mode, spec, layers, scale) for (method, layer), mode in kinds]
        for call in calls:
            call()  # records the graphs of this geometry
        best = {}
        for _ in range(rounds):  # round-robin: every row once per round, each keeps its smallest
            for i, call in enumerate(calls):
                best[i] = min(best.get(i, float("inf")), time_ms(call))
        for i, ((method, layer), mode) in enumerate(kinds):
            call = calls[i]
            wall = best[i] if rounds else statistics.median(time_ms(call) for _ in range(3))
            prof = _profiled(call)
            row = {"n": n, "method": method, "layer": layer, "mode": mode, "wall_ms": wall, "dense_ms": dense_ms,
                   "fixed_ms": wall - prof["attention_ms"], "speedup": dense_ms / wall, **prof}
            rows.append(row)
            print(f"{method:<16}{layer:<9}{mode:<11}{wall:8.3f}{row['fixed_ms']:8.3f}{prof['attention_ms']:8.3f}"
                  f"{prof['gpu_busy_ms']:8.3f}{prof['kernels']:9d}{row['speedup']:9.2f}"
                  + ("  host: " + ", ".join(f"{k} {v:.3f}" for k, v in prof["host_ms"].items()) if host else ""))
            sys.stdout.flush()
        del layers
        torch.cuda.empty_cache()
    with open(out, "w") as f:
        json.dump({"command": command, "machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    args = [a for a in sys.argv[2:] if not a.startswith("--")]
    rounds = [int(a.split("=", 1)[1]) for a in sys.argv[2:] if a.startswith("--rounds=")]
    main(sys.argv[1], [int(a) for a in args] or [4096, 8192, 16384, 32768], host="--host" in sys.argv[2:],
         synced="--synced" in sys.argv[2:], rounds=rounds[-1] if rounds else 0, in_graph="--in-graph" in sys.argv[2:])
