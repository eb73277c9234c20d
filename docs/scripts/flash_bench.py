"""Kernel grid for the `flash` backend on one GPU, in one process: cuDNN dense, Triton, flash, auto.

Shapes: Llama-3.1-8B attention (32 query / 8 KV heads, head dim 128) and Qwen2.5-Coder-0.5B
(14 / 2, head dim 64), bf16, block 128, batch 1; N in 8K-128K; random per-head causal block masks
with the diagonal and block 0 kept (``kernels.bench.random_mask``) at each density. Each time is
the median of CUDA-event-timed repeats after warm-up (``kernels.bench.time_ms``); "x cuDNN" is
the throughput on kept blocks over cuDNN's dense causal throughput. First, the first call at a new
prompt length after warm-up, for every way of calling flash-attn-4 (``kernels/flash.py``'s
``COMPILE_MODES``: direct, dynamic, static); the grid then times flash in the mode the process started
with (``SHAREDATTN_FLASH_COMPILE``, by default direct), which the table's header line and the JSON
(``flash_mode``) name.

Prints a table and writes JSON. On the H200 (flash-attn-4 installed by docs/scripts/h200_flash.sh):

    bash docs/scripts/h200_flash.sh python3 docs/scripts/flash_bench.py $OUT/flash_bench.json

The whole grid takes a few minutes (``--block-size 64`` runs it on 64-token blocks, where auto keeps
Triton; ``--rounds 3`` times the backends three times in alternation and keeps each one's smallest
median, against the spread of sub-millisecond calls); ``auto`` is given the layout's kept share, as
the synced prefill path gives it; ``--budget-s`` stops starting new lengths past that many seconds
(the JSON still gets written). Needs CUDA; without flash-attn-4 the flash columns say why.

``--mode mass``: SharePrefill's pivotal heads' block-mass map, the two ways ``sparse_attention`` can
make it (``kernels/backend.py``, ``FLASH_MASS_MAX_SHARE``), side by side in one process: Triton in one call
(``block_sparse_attention(..., return_block_mass=True, mass_heads=..., mass_pass="auto")``, with the
mapped-head count passed as the prefill passes it) against flash-attn-4 with its log-sum-exp plus
our mass pass for the mapped heads (``flash.flash_sparse_attention_with_mass``); beside them each
forward alone (Triton; flash without and with the log-sum-exp, the difference being what the
log-sum-exp costs). Same shapes and masks as the grid (medians of up to 15 repeats), at 32K and
128K, densities 0.1 and 0.5, and 1/8, 1/4 and all of the heads mapped (evenly spread); each row also
gives the largest difference between the two maps (mapped heads) and the two outputs, and which
pass Triton's ``mass_pass="auto"`` took. About one minute on the H200 (session 8; ``--budget-s``, 200 s
here, stops starting new lengths):

    bash docs/scripts/h200_flash.sh python3 docs/scripts/flash_bench.py $OUT/flash_mass.json --mode mass
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch

from sharedattn import kernels
from sharedattn.kernels import backend as kb
from sharedattn.kernels import bench, flash
from sharedattn.kernels.layout import BlockLayout

SHAPES = {"llama": bench.BenchShape(32, 8, 128), "qwen": bench.BenchShape(14, 2, 64)}


TIMING = {"min_total_ms": 200.0, "max_reps": 20}  # bench.time_ms's options for every timing here


def _time(fn) -> float:
    return bench.time_ms(fn, **TIMING)


def dense_ms(q, k, v) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

    def run():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)
    return _time(run)


def one_length(shape_name: str, n: int, densities, flash_ok: bool, log, rounds: int = 1) -> list[dict]:
    """The grid's rows at one length; each backend timed ``rounds`` times in alternation, the smallest
    median kept (``--rounds``)."""
    shape = SHAPES[shape_name]
    device = torch.device(torch.cuda.current_device())
    q, k, v = bench.make_inputs(shape, n, device)
    cudnn = dense_ms(q, k, v)
    dense_tflop = 2 * shape.heads * n * n * shape.head_dim / 1e12
    gen = torch.Generator(device=device).manual_seed(n)
    rows = []
    for d in densities:
        layout = BlockLayout.from_dense(bench.random_mask(shape, n, d, gen, device), shape.block_size)
        flop = 4 * shape.head_dim * bench.kept_pairs(layout) / 1e12
        row = {"shape": shape_name, "n": n, "target_density": d, "density": layout.density(), "cudnn_ms": cudnn,
               "ms": {}, "x_cudnn": {}}
        # auto gets the kept share as the synced prefill path passes it (bench.backend_ms)
        names = ["triton", *(["flash"] if flash_ok else []), "auto"]
        for _ in range(rounds):
            for name in names:
                ms = bench.backend_ms(name, q, k, v, layout, **TIMING)
                row["ms"][name] = min(ms, row["ms"].get(name, ms))
        row["auto_picks"] = kb.attention_backend(q, layout, kept_share=row["density"]).value
        for name, ms in row["ms"].items():
            row["x_cudnn"][name] = (flop / ms) / (dense_tflop / cudnn)
        best = min(row["ms"]["triton"], row["ms"].get("flash", float("inf")))
        row["auto_over_best"] = row["ms"]["auto"] / best
        if flash_ok and d == densities[len(densities) // 2]:
            with kernels.use_backend("flash"):
                a = kernels.sparse_attention(q, k, v, layout)
            with kernels.use_backend("triton"):
                b = kernels.sparse_attention(q, k, v, layout)
            row["max_abs_diff_flash_triton"] = float((a.float() - b.float()).abs().max())
        log(_fmt(row))
        rows.append(row)
    del q, k, v
    torch.cuda.empty_cache()
    return rows


def first_calls(mode: str, shape_name: str, lengths, log) -> dict:
    """Warm up at lengths[0], then time the first call at each later length (seconds, synchronised);
    leaves ``flash.COMPILE`` at ``mode``."""
    flash.COMPILE = mode
    shape = SHAPES[shape_name]
    device = torch.device(torch.cuda.current_device())
    out = {"mode": mode, "shape": shape_name, "lengths": list(lengths), "seconds": []}
    for n in lengths:
        q, k, v = bench.make_inputs(shape, n, device, seed=n)
        gen = torch.Generator(device=device).manual_seed(n)
        layout = BlockLayout.from_dense(bench.random_mask(shape, n, 0.2, gen, device), shape.block_size, n, n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        flash.flash_sparse_attention(q, k, v, layout)
        torch.cuda.synchronize()
        out["seconds"].append(time.perf_counter() - t0)
    out["warm_up_s"], out["after_warm_up_max_s"] = out["seconds"][0], max(out["seconds"][1:])
    log(f"first call at a new length, {mode}: warm-up {out['warm_up_s']:.2f} s, then "
        + ", ".join(f"{n}: {s:.3f} s" for n, s in zip(lengths[1:], out["seconds"][1:])))
    return out


def _fmt(r: dict) -> str:
    ms = r["ms"]
    fl = f"{ms['flash']:8.2f}" if "flash" in ms else "     n/a"
    return (f"| {r['shape']:5s} | {r['n']:6d} | {r['density']:.3f} | {r['cudnn_ms']:8.2f} | {ms['triton']:8.2f} | "
            f"{fl} | {ms['auto']:8.2f} ({r['auto_picks']}) | {r['x_cudnn']['triton']:.2f} | "
            f"{r['x_cudnn'].get('flash', float('nan')):.2f} | {r['auto_over_best']:.3f} |")


def _mapped_heads(heads: int, fraction: float, device) -> torch.Tensor:
    """Bool ``[1, H]``: ``round(fraction * H)`` heads (at least one), evenly spread over the KV groups."""
    n = max(1, min(heads, round(fraction * heads)))
    wanted = torch.zeros(1, heads, dtype=torch.bool, device=device)
    wanted[0, torch.linspace(0, heads - 1, n, device=device).round().long()] = True
    return wanted


def _triton_map_pass(layout, shape, wanted, n_mapped: int, device) -> str:
    """Which pass ``mass_pass="auto"`` takes for this call: "one" (tile sums in the forward) or "two"."""
    from sharedattn.kernels import block_sparse
    from sharedattn.kernels.attn_fwd import default_config

    cfg = default_config(shape.block_size, shape.head_dim, True)
    slots = block_sparse._one_pass_slots(layout, cfg, wanted, "auto", device, n_mapped)
    return "one" if slots is not None else "two"


def _mass_time(fn) -> float:
    return bench.time_ms(fn, min_total_ms=150.0, max_reps=15)


def mass_length(shape_name: str, n: int, densities, fractions, flash_ok: bool, log) -> list[dict]:
    """One length of ``--mode mass``: per density the forwards alone, then per mapped fraction both maps."""
    from sharedattn.kernels.block_sparse import block_sparse_attention

    shape = SHAPES[shape_name]
    device = torch.device(torch.cuda.current_device())
    q, k, v = bench.make_inputs(shape, n, device)
    gen = torch.Generator(device=device).manual_seed(n)
    rows = []
    for d in densities:
        layout = BlockLayout.from_dense(bench.random_mask(shape, n, d, gen, device), shape.block_size)
        alone = {"triton": _mass_time(lambda: block_sparse_attention(q, k, v, layout))}
        if flash_ok:
            alone["flash"] = _mass_time(lambda: flash.flash_sparse_attention(q, k, v, layout))
            alone["flash_lse"] = _mass_time(lambda: flash.flash_sparse_attention(q, k, v, layout, return_lse=True))
        for fraction in fractions:
            wanted = _mapped_heads(shape.heads, fraction, device)
            n_mapped = int(wanted.sum())

            def triton_map():
                return block_sparse_attention(q, k, v, layout, return_block_mass=True, mass_heads=wanted,
                                              mass_pass="auto", num_mass_heads=n_mapped)

            def flash_map():
                return flash.flash_sparse_attention_with_mass(q, k, v, layout, mass_heads=wanted)

            row = {"shape": shape_name, "n": n, "target_density": d, "density": layout.density(),
                   "mapped_fraction": fraction, "mapped_heads": n_mapped, "ms": dict(alone),
                   "auto_picks_with_map": kb.attention_backend(q, layout, return_block_mass=True,
                                                                mapped_share=n_mapped / wanted.numel()).value,
                   "triton_map_pass": _triton_map_pass(layout, shape, wanted, n_mapped, device)}
            row["ms"]["triton_map"] = _mass_time(triton_map)
            if flash_ok:
                row["ms"]["flash_map"] = _mass_time(flash_map)
                row["ms"]["flash_mass_pass"] = row["ms"]["flash_map"] - row["ms"]["flash_lse"]
                row["flash_map_over_triton_map"] = row["ms"]["flash_map"] / row["ms"]["triton_map"]
                t_out, t_mass = triton_map()
                f_out, f_mass = flash_map()
                row["max_abs_diff_map"] = float((f_mass[wanted] - t_mass[wanted]).abs().max())
                row["max_abs_diff_unmapped_map"] = float(f_mass[~wanted].abs().max()) if n_mapped < shape.heads else 0.0
                row["max_abs_diff_out"] = float((f_out.float() - t_out.float()).abs().max())
                del t_out, t_mass, f_out, f_mass
            log(_fmt_mass(row))
            rows.append(row)
    return rows  # q, k, v and the layouts go with this frame; the caller empties the cache


def _fmt_mass(r: dict) -> str:
    ms = r["ms"]
    f = lambda key: f"{ms[key]:8.2f}" if key in ms else "     n/a"  # noqa: E731
    ratio = f"{r['flash_map_over_triton_map']:.2f}" if "flash_map_over_triton_map" in r else "n/a"
    diff = f"{r['max_abs_diff_map']:.1e}" if "max_abs_diff_map" in r else "n/a"
    out = f"{r['max_abs_diff_out']:.1e}" if "max_abs_diff_out" in r else "n/a"
    return (f"| {r['shape']:5s} | {r['n']:6d} | {r['density']:.3f} | {r['mapped_heads']:2d} | {f('triton')} | "
            f"{f('flash')} | {f('flash_lse')} | {f('triton_map')} | {f('flash_map')} | {f('flash_mass_pass')} | "
            f"{ratio} | {r['auto_picks_with_map']} | {r['triton_map_pass']} | {diff} | {out} |")


MASS_HEADER = ("| shape | N | density | mapped heads | triton ms | flash ms | flash+lse ms | triton+map ms | "
               "flash+lse+mass ms | mass pass ms | flash map / triton map | auto picks (map) | triton map pass | "
               "map max diff | out max diff |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _machine() -> dict:
    import triton

    return {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__}


def main_mass(args, start: float) -> None:
    why = kb.flash_unavailable()
    report = {"command": " ".join(sys.argv), "mode": "mass", "machine": _machine(), "flash": why or "available",
              "flash_mode": flash.COMPILE, "flash_mass_max_share": kb.FLASH_MASS_MAX_SHARE,
              "lse_to_natural": flash.lse_to_natural() if why is None else None,
              "rows": [], "skipped": []}
    print(f"command: {report['command']}\nmachine: {report['machine']}\nflash backend: {report['flash']} "
          f"(mode {flash.COMPILE}); FLASH_MASS_MAX_SHARE={kb.FLASH_MASS_MAX_SHARE}", flush=True)
    print(MASS_HEADER, flush=True)
    densities = [float(x) for x in (args.densities or "0.1,0.5").split(",")]
    fractions = [float(x) for x in args.fractions.split(",")]
    for shape_name in args.shapes.split(","):
        for n in (int(x) for x in (args.lengths or "32768,131072").split(",")):
            if time.perf_counter() - start > args.budget_s:
                report["skipped"].append({"shape": shape_name, "n": n})
                continue
            report["rows"].extend(mass_length(shape_name, n, densities, fractions, why is None,
                                              lambda s: print(s, flush=True)))
            torch.cuda.empty_cache()
    report["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out} ({report['seconds']:.0f} s; skipped {report['skipped'] or 'nothing'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file to write")
    ap.add_argument("--mode", choices=("grid", "mass"), default="grid",
                    help="grid: the backends' forward grid; mass: the block-mass map on Triton and on flash")
    ap.add_argument("--shapes", default="llama,qwen")
    ap.add_argument("--lengths", default=None, help="grid: 8192,...,131072; mass: 32768,131072")
    ap.add_argument("--densities", default=None, help="grid: 0.05,0.1,0.3,0.5,1.0; mass: 0.1,0.5")
    ap.add_argument("--fractions", default="0.125,0.25,1", help="mass: fractions of the heads that are mapped")
    ap.add_argument("--first-call-lengths", default="8192,9000,12345,17000,33000")
    ap.add_argument("--block-size", type=int, default=128, help="grid: the layouts' block size (128 or 64)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="grid: time the backends this many times in alternation, keep each one's smallest median "
                         "(sub-millisecond calls spread by up to 12%% between two timings of one kernel)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new length after this many seconds (grid: 400, mass: 200)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("flash_bench.py needs a CUDA GPU")
    start = time.perf_counter()
    if args.mode == "mass":
        args.budget_s = 200.0 if args.budget_s is None else args.budget_s
        return main_mass(args, start)
    for name, shape in SHAPES.items():  # the grid's block size (the auto rule runs flash at 128 only)
        SHAPES[name] = dataclasses.replace(shape, block_size=args.block_size)
    args.lengths = args.lengths or "8192,16384,32768,65536,131072"
    args.densities = args.densities or "0.05,0.1,0.3,0.5,1.0"
    args.budget_s = 400.0 if args.budget_s is None else args.budget_s
    why = kb.flash_unavailable()
    grid_mode = flash.COMPILE  # the mode the grid times flash in: the default (direct) or the environment's
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "flash": why or "available",
              "flash_mode": grid_mode, "block_size": args.block_size,
              "auto_rule": {"head_dims": kb.AUTO_FLASH_HEAD_DIMS, "min_keys": kb.AUTO_FLASH_MIN_KEYS,
                            "block_sizes": kb.AUTO_FLASH_BLOCK_SIZES,
                            "kept_share_steps": kb.AUTO_FLASH_KEPT_SHARE_STEPS},
              "rows": [], "first_call": [], "skipped": []}
    print(f"gpu {report['gpu']}, torch {torch.__version__}, flash backend: {report['flash']} "
          f"(the grid times mode {grid_mode})", flush=True)
    print("| shape | N | density | cuDNN ms | triton ms | flash ms | auto ms (pick) | triton x cuDNN | "
          "flash x cuDNN | auto / best |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    densities = [float(x) for x in args.densities.split(",")]
    if why is None:
        lengths = [int(x) for x in args.first_call_lengths.split(",")]
        for mode in flash.COMPILE_MODES:  # a mode whose packages are missing says so and is skipped
            flash.COMPILE = mode
            missing = kb.flash_unavailable()
            report["first_call"].append({"mode": mode, "unavailable": missing} if missing else
                                        first_calls(mode, "llama", lengths, lambda s: print(s, flush=True)))
        flash.COMPILE = grid_mode
    for shape_name in args.shapes.split(","):
        for n in (int(x) for x in args.lengths.split(",")):
            if time.perf_counter() - start > args.budget_s:
                report["skipped"].append({"shape": shape_name, "n": n})
                continue
            report["rows"].extend(one_length(shape_name, n, densities, why is None, lambda s: print(s, flush=True),
                                                  args.rounds))
    report["seconds"] = time.perf_counter() - start
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out} ({report['seconds']:.0f} s; skipped {report['skipped'] or 'nothing'})")


if __name__ == "__main__":
    main()
