"""flash-attn-4 called directly against the same kernel through FlexAttention (issue 15).

    bash docs/scripts/h200_flash.sh python3 docs/scripts/flash_direct.py OUT.json [N ...]

The `flash` backend has two ways to reach flash-attn-4's Hopper block-sparse kernel
(``kernels/flash.py``): its own forward called with our four block tensors (mode ``direct``, the
default since session 10) and ``flex_attention(..., kernel_options={"BACKEND": "FLASH"})`` compiled
with a ``BlockMask`` (mode ``dynamic``, the default until session 9, which measured about 1 ms per call
at 32K that does not shrink with the kept blocks).

Per length (Llama-3.1-8B attention shapes: 32 / 8 heads, head dim 128, bf16, block 128) and
density (random per-head causal masks, ``kernels.bench.random_mask``): cuDNN dense, our Triton
kernel and the flash backend in both modes, medians of CUDA-event timings in one process; the direct
mode's largest difference from our kernel's output; and its first call at a new length after
warm-up (does it compile per length?). A variant that fails records its error and the rest go on.
Needs CUDA and flash-attn-4 (docs/scripts/h200_flash.sh). Session 10's run:
docs/flash-runs/flash-direct-session10-h200.json (docs/benchmarks.md, "flash-attn-4 called directly").
"""
from __future__ import annotations

import json
import platform
import sys
import time
from unittest import mock

import torch

from sharedattn import kernels
from sharedattn.kernels import bench, flash
from sharedattn.kernels.layout import BlockLayout

SHAPE = bench.BenchShape(32, 8, 128)
DENSITIES = (0.05, 0.1, 0.3, 1.0)


def _direct(q, k, v, layout: BlockLayout, scale: float):
    """The flash backend in its direct mode (flash-attn-4's own forward on our block tensors)."""
    with mock.patch.object(flash, "COMPILE", "direct"):
        return flash.flash_sparse_attention(q, k, v, layout, scale=scale)


def _flex(q, k, v, layout: BlockLayout, scale: float):
    """The flash backend through FlexAttention (its dynamic mode)."""
    with mock.patch.object(flash, "COMPILE", "dynamic"):
        return flash.flash_sparse_attention(q, k, v, layout, scale=scale)


def _timed(fn) -> tuple[float | None, str | None]:
    try:
        return bench.time_ms(fn, min_total_ms=200.0, max_reps=20), None
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result here
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def _cudnn_ms(q, k, v, scale: float) -> float | None:
    """cuDNN's dense causal attention on the same q, k, v (K/V heads repeated for GQA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True, scale=scale)
    return _timed(cudnn)[0]


def one_length(n: int, device) -> list[dict]:
    q, k, v = bench.make_inputs(SHAPE, n, device)
    scale = SHAPE.head_dim ** -0.5
    dense_ms = _cudnn_ms(q, k, v, scale)
    gen = torch.Generator(device=device).manual_seed(n)
    rows = []
    for d in DENSITIES:
        layout = BlockLayout.from_dense(bench.random_mask(SHAPE, n, d, gen, device), SHAPE.block_size)
        row = {"n": n, "target_density": d, "density": layout.density(), "cudnn_ms": dense_ms, "ms": {},
               "errors": {}}
        for name, fn in (("triton", lambda: kernels.sparse_attention(q, k, v, layout, scale=scale)),
                         ("flex_flash", lambda: _flex(q, k, v, layout, scale)),
                         ("direct", lambda: _direct(q, k, v, layout, scale))):
            with kernels.use_backend("triton" if name == "triton" else "flash"):
                row["ms"][name], err = _timed(fn)
            if err:
                row["errors"][name] = err
        if row["ms"]["direct"] is not None:
            with kernels.use_backend("triton"):
                ours = kernels.sparse_attention(q, k, v, layout, scale=scale)
            row["direct_max_abs_diff"] = float((_direct(q, k, v, layout, scale).float() - ours.float()).abs().max())
        row["x_cudnn"] = {name: (dense_ms * row["density"] / ms if ms and dense_ms else None)
                          for name, ms in row["ms"].items()}
        print(json.dumps({key: row[key] for key in ("n", "density", "ms", "x_cudnn", "errors")}
                         | {"diff": row.get("direct_max_abs_diff")}), flush=True)
        rows.append(row)
    return rows


def first_call(n: int, device) -> dict:
    """Seconds of the direct call at ``n`` and then at ``n + 1000`` (a new length) after warm-up."""
    out = {}
    for length in (n, n + 1000):
        q, k, v = bench.make_inputs(SHAPE, length, device)
        layout = BlockLayout.from_dense(bench.random_mask(SHAPE, length, 0.2, torch.Generator(device=device)
                                                          .manual_seed(1), device), SHAPE.block_size)
        start = time.perf_counter()
        try:
            _direct(q, k, v, layout, SHAPE.head_dim ** -0.5)
            torch.cuda.synchronize()
            out[str(length)] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001
            out[str(length)] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return out


def main() -> None:
    out_file, lengths = sys.argv[1], [int(a) for a in sys.argv[2:]] or [32768, 65536, 131072]
    device = torch.device("cuda")
    why = flash.flash_unavailable(device)
    report = {"command": "python docs/scripts/flash_direct.py " + " ".join(sys.argv[1:]),
              "machine": f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, {platform.node()})",
              "flash": why or "available", "rows": [], "first_call_s": None}
    print(report["command"], report["machine"], "flash:", report["flash"], sep="\n", flush=True)
    if why is None:
        report["first_call_s"] = first_call(16384, device)
        print("first call", report["first_call_s"], flush=True)
        for n in lengths:
            report["rows"].extend(one_length(n, device))
    with open(out_file, "w") as f:
        json.dump(report, f, indent=1)
    print("wrote", out_file)


if __name__ == "__main__":
    main()
