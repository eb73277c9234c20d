"""Profile one sparse-prefill layer on the GPU: where the fixed per-layer cost goes."""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sharedattn.analysis.evaluation.planted import PlantedSpec, planted_cluster_table, planted_layer
from sharedattn.analysis.method.method_config import MethodName, make_config
from sharedattn.analysis.method.sharing import SharingState
from sharedattn.analysis.method.sparse_prefill import SparsePrefill

spec = PlantedSpec()
for n in (4096, 32768):
    q, k, v = planted_layer(spec, n, 0, "cuda")
    for method in ("vertical-slash", "shareprefill"):
        cfg = make_config(method, dense_below=0)
        sharing = SharingState(planted_cluster_table(spec, 2)) if method == "shareprefill" else None
        run = SparsePrefill(MethodName(method), cfg, sharing)
        layer = 1 if method == "shareprefill" else 0
        if sharing is not None:
            run.attend(0, q, k, v, spec.head_dim ** -0.5)
        for _ in range(3):
            run.attend(layer, q, k, v, spec.head_dim ** -0.5)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            run.attend(layer, q, k, v, spec.head_dim ** -0.5)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 10 * 1000
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run.attend(layer, q, k, v, spec.head_dim ** -0.5)
            torch.cuda.synchronize()
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"\n=== {method} N={n}: wall {wall:.2f} ms per layer, {launches} GPU kernels ===")
        print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))
        print(events.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=48))
    sys.stdout.flush()
