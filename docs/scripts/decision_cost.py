"""GPU time of the decision step of one sparse-prefill layer, by function (H200 diagnosis, issue 17).

    python docs/scripts/decision_cost.py [N ...]

Planted Llama-3.1-8B-shape layer (analysis/evaluation/planted.py) per N (default 4096 32768). For
each method: the whole step (probe, estimates, decisions, layout draft) replayed from its CUDA
graph (median, CUDA events), then one eager run under torch.profiler with every function of the
step wrapped in a ``record_function`` range, printed as GPU time and kernel count per function.
"""
from __future__ import annotations

import functools
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from sharedattn import kernels
from sharedattn.analysis.evaluation.planted import PlantedSpec, planted_cluster_table, planted_layer
from sharedattn.analysis.method import sparse_prefill as sp
from sharedattn.analysis.method.method_config import MethodName, make_config
from sharedattn.analysis.method.sharing import SharingState
from sharedattn.kernels.bench import time_ms

WRAPPED = {sp: ("a_shape_mask", "coverage_counts", "probe_coverage"),
           kernels: ("last_block_pooled_profiles", "probe_column_estimate", "pooled_block_estimate", "head_decisions",
                     "assemble_layout")}


def _label(name, fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        with record_function(f"@{name}"):
            return fn(*a, **kw)
    return wrapper


def main(lengths):
    for module, names in WRAPPED.items():
        for name in names:
            setattr(module, name, _label(name, getattr(module, name)))
    SharingState.patterns_of = _label("borrowed patterns", SharingState.patterns_of)
    spec = PlantedSpec()
    for n in lengths:
        q, k, _ = planted_layer(spec, n, 1, "cuda")
        scale = spec.head_dim ** -0.5
        for method in ("vertical-slash", "flexprefill", "shareprefill"):
            cfg = make_config(method, dense_below=0)
            sharing = SharingState(planted_cluster_table(spec, 2)) if method == "shareprefill" else None
            run = sp.SparsePrefill(MethodName(method), cfg, sharing)
            if sharing is not None:
                sharing.reset(1, n // 128, n // 128, q.device)
            inputs = run._step_inputs(q, k)
            if sharing is not None:
                inputs["cluster"] = sharing.cluster_row(1, q.device)
            key = ("probe", n)
            step = functools.partial(run._step, scale=scale, nq=n)
            graph_ms = time_ms(lambda: run.graphs.run(key, step, inputs))
            eager_ms = time_ms(lambda: step(**inputs))
            with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                step(**inputs)
                torch.cuda.synchronize()
            events = prof.key_averages()
            kernels_total = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
            print(f"\n=== {method} N={n}: step replayed {graph_ms:.3f} ms, eager {eager_ms:.3f} ms, "
                  f"{kernels_total} GPU kernels ===")
            rows = sorted((e for e in events if e.key.startswith("@")), key=lambda e: -e.device_time_total)
            for e in rows:
                print(f"  {e.key[1:]:<24} GPU {e.device_time_total / 1000:7.3f} ms  calls {e.count}")
            top = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA),
                         key=lambda e: -e.self_device_time_total)[:12]
            for e in top:
                print(f"    {e.key[:60]:<60} {e.self_device_time_total / 1000:7.3f} ms  x{e.count}")
        sys.stdout.flush()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [4096, 32768])
