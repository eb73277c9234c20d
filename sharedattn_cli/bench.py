"""`sharedattn bench kernel`: time the block-sparse kernel against cuDNN, flash and FlexAttention.

Thin command over ``sharedattn.kernels.bench``; heavy imports happen inside the command body.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.kernels.limits import KernelChoice

from .common import cli_command, kernels_to_time
from .options import KernelOpt

bench_app = typer.Typer(help="Benchmarks: kernel and prefill need a GPU; capture runs anywhere.",
                        no_args_is_help=True, add_completion=False)


@bench_app.callback()
def _bench() -> None:
    """Benchmarks of the kernels (need a CUDA GPU)."""


def _csv(text: str, kind):
    return [kind(x) for x in text.split(",") if x.strip()]


@bench_app.command("kernel")
@cli_command
def kernel(
    lengths: Annotated[str, typer.Option(help="Comma-separated sequence lengths.")] = "8192,32768,65536,131072",
    densities: Annotated[str, typer.Option(help="Comma-separated block densities.")] = "1.0,0.5,0.3,0.1,0.05",
    patterns: Annotated[str, typer.Option(help="random, vertical_slash and/or random_shared (one mask for all "
                                          "heads).")] = "random,vertical_slash",
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON results here.")] = None,
    tune: Annotated[bool, typer.Option(help="Sweep launch configs first and use the best.")] = False,
    tune_length: Annotated[int, typer.Option(help="Length for the config sweep.")] = 32768,
    estimate_length: Annotated[int, typer.Option(help="Length for the estimation and block-mass timings "
                                                 "(0: skip).")] = 131072,
    kernel_choice: KernelOpt = KernelChoice.AUTO,
) -> None:
    """Block-sparse attention (ours, Triton; flash-attn-4 and auto with --kernel) vs dense SDPA (cuDNN,
    flash-attention 2) and compiled FlexAttention.

    Example: sharedattn bench kernel --lengths 8192,32768 --densities 1.0,0.1 --out bench.json
    """
    import torch

    if not torch.cuda.is_available():
        typer.echo("sharedattn bench kernel needs a CUDA GPU; none is available here.")
        raise typer.Exit(2)
    import triton

    from sharedattn.kernels import bench as kb
    from sharedattn.kernels.block_sparse import AttnConfig, default_config

    timed, note = kernels_to_time(kernel_choice)
    extra = tuple(name for name in timed if name != "triton")  # ours (Triton) is always timed

    device = torch.device(torch.cuda.current_device())
    shape = kb.BenchShape()
    args = sys.argv[1:]
    report = {"command": " ".join(["sharedattn", *([] if args[:1] == ["bench"] else ["bench"]), *args]),
              "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "triton": triton.__version__, "shape": vars(shape), "backends": ["triton", *extra],
              "backend_note": note}
    typer.echo(f"command: {report['command']}\ngpu: {report['gpu']} (torch {torch.__version__}, "
               f"triton {triton.__version__}); attention backends: {', '.join(report['backends'])}"
               + (f" ({note})" if note else ""))
    report["matmul_tflops"] = peak = kb.matmul_tflops(device)
    report["copy_gbs"] = kb.copy_bandwidth_gbs(device)
    typer.echo(f"measured bf16 matmul: {peak:.0f} TFLOP/s (the compute ceiling for the floor); "
               f"copy {report['copy_gbs']:.0f} GB/s (read + write)")
    config = default_config(shape.block_size, shape.head_dim, on_gpu=True)
    if tune:
        report["tuning"] = rows = kb.tune_configs(shape, tune_length, device, log=typer.echo)
        config = AttnConfig(*rows[0]["config"]) if rows else config
    report["config"] = vars(config)
    typer.echo(f"kernel config: {config}")
    report["dense"], report["cases"] = [], []
    for n in _csv(lengths, int):
        info, cases = kb.run_length(shape, n, _csv(densities, float), _csv(patterns, str), device,
                                    config, peak, log=typer.echo, backends=extra)
        report["dense"].append(info)
        report["cases"].extend(kb.result_dict(c) for c in cases)
    if estimate_length:
        _side_costs(kb, shape, estimate_length, device, report)
    _print_table(report)
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        typer.echo(f"wrote {out}")


def _side_costs(kb, shape, n, device, report) -> None:
    """Estimation kernels for a whole layer and the block-mass map of a pivotal layer at ``n``."""
    from sharedattn.kernels import bench_costs as kc

    q, k, v = kb.make_inputs(shape, n, device)
    est = kc.estimation_ms(q, k, shape.block_size)
    dense = next((d["cudnn_ms"] for d in report["dense"] if d["n"] == n), None)
    if dense is None:
        dense = kb.Baselines(q, k, v).sdpa_ms("cudnn")
    report["estimation"] = {"n": n, "ms": est, "dense_cudnn_ms": dense, "fraction": est["all"] / dense}
    typer.echo(f"estimation at {n}: {est} -> {100 * est['all'] / dense:.2f}% of dense cuDNN ({dense:.1f} ms)")
    del q, k, v
    report["block_mass"] = bm = kc.block_mass_ms(shape, n, device)
    typer.echo(f"block-mass map at {n} ({bm['mapped_heads']} of {shape.heads} heads mapped, dense layout): "
               f"forward {bm['forward_ms']:.1f} ms, + one-pass map {bm['one_ms']:.1f} ms, "
               f"+ two-pass map {bm['two_ms']:.1f} ms (maps differ by {bm['max_abs_diff']:.1e})")


def _print_table(report) -> None:
    extra = [name for name in report.get("backends", []) if name != "triton"]
    head = "".join(f" {name} ms |" for name in extra)
    typer.echo(f"\n| N | pattern | density | ours ms | floor ms | flex ms |{head} ours TF/s | x cuDNN | "
               f"x SDPA-flash | vs flex |" + (" flash x cuDNN | auto / best |" if extra else ""))
    typer.echo("|---|---|---|---|---|---|" + "---|" * len(extra) + "---|---|---|---|"
               + ("---|---|" if extra else ""))
    for c in report["cases"]:
        cols = "".join(f" {c['ms'][name]:.2f} |" for name in extra)
        tail = ""
        if extra:
            r = c["ratios"]
            tail = (f" {r['flash_vs_cudnn']:.2f} |" if "flash_vs_cudnn" in r else " n/a |") \
                + (f" {r['auto_over_best']:.3f} |" if "auto_over_best" in r else " n/a |")
        typer.echo(f"| {c['n']} | {c['pattern']} | {c['density']:.3f} | {c['ms']['ours']:.2f} | "
                   f"{c['ms']['floor']:.2f} | {c['ms']['flex']:.2f} |{cols} {c['tflops']['ours']:.0f} | "
                   f"{c['ratios']['vs_cudnn']:.2f} | {c['ratios']['vs_flash']:.2f} | "
                   f"{c['ratios']['speedup_vs_flex']:.2f} |{tail}")
    if report.get("backend_note"):
        typer.echo(report["backend_note"])


if __name__ == "__main__":
    bench_app()
