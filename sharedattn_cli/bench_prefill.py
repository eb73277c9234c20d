"""`sharedattn bench prefill`: whole-layer sparse prefill vs dense cuDNN on planted structure.

Thin command over ``sharedattn.analysis.evaluation.layer_bench``; heavy imports happen inside the body.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import DEFAULT_GAMMA
from sharedattn.kernels.limits import KernelChoice

from .common import cli_command, kernels_to_time
from .options import GraphsOpt, KernelOpt

SPARSE = "vertical-slash,flexprefill,shareprefill"


def _csv(text: str, kind) -> list:
    return [kind(x) for x in text.split(",") if x.strip()]


def bench_prefill(
    lengths: Annotated[str, typer.Option(help="Comma-separated lengths for the main "
                                         "table.")] = "4096,32768,65536,131072",
    crossover: Annotated[str, typer.Option(help="Comma-separated lengths for the crossover search "
                                           "('' skips it).")] = "1024,2048,4096,8192,16384",
    methods: Annotated[str, typer.Option(help="Comma-separated sparse methods.")] = SPARSE,
    gamma: Annotated[float, typer.Option(help="Coverage target of every method.")] = DEFAULT_GAMMA,
    exact_tail: Annotated[int, typer.Option(help="Last tokens whose query blocks run every causal block "
                                            "(vertical-slash, flexprefill, shareprefill; 0: the papers').")] = 0,
    graphs: GraphsOpt = True,
    kernel: KernelOpt = KernelChoice.AUTO,
    seed: Annotated[int, typer.Option(help="Seed of the planted workload.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON results here.")] = None,
) -> None:
    """Whole per-layer pipeline (estimation, decisions, layout, kernel) of the sparse methods
    against cuDNN dense SDPA, Llama-3.1-8B shapes, planted attention structure, with fidelity.

    Example: sharedattn bench prefill --lengths 4096,32768 --crossover '' --out prefill.json
    """
    import torch

    chosen = _check_options(methods, gamma, exact_tail)
    if not torch.cuda.is_available():
        typer.echo("sharedattn bench prefill needs a CUDA GPU; none is available here.")
        raise typer.Exit(2)
    import triton

    timed, note = kernels_to_time(kernel)
    from sharedattn.analysis.evaluation import layer_bench as lb
    from sharedattn.analysis.evaluation.planted import PlantedSpec
    from sharedattn.kernels.bench import time_ms

    device = torch.device(torch.cuda.current_device())
    spec = PlantedSpec(seed=seed)
    args = sys.argv[sys.argv.index("prefill") + 1:] if "prefill" in sys.argv else sys.argv[1:]
    command = "sharedattn bench prefill " + " ".join(shlex.quote(a) for a in args)
    report = {"command": command.strip(), "gpu": torch.cuda.get_device_name(device),
              "torch": torch.__version__, "triton": triton.__version__, "gamma": gamma,
              "exact_tail": exact_tail, "graphs": graphs, "kernels": timed, "kernel_note": note,
              "shape": {"heads": spec.heads, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
                        "batch": spec.batch, "dtype": "bfloat16",
                        "block_size": lb.config_for(chosen[0], gamma, exact_tail).block_size}, "seed": seed}
    typer.echo(f"command: {report['command']}\ngpu: {report['gpu']} (torch {torch.__version__}, "
               f"triton {triton.__version__}); kernels timed: {', '.join(timed)}" + (f" ({note})" if note else ""))
    opts = {"exact_tail": exact_tail, "use_graphs": graphs, "kernels": tuple(timed)}
    rows = _run(lb, spec, _csv(lengths, int), device, time_ms, gamma, chosen, **opts)
    report["results"] = [r.to_json() for r in rows]
    cross_lengths = _csv(crossover, int)
    if cross_lengths:
        cross_rows = _run(lb, spec, cross_lengths, device, time_ms, gamma, chosen, fidelity=False, **opts)
        cross = lb.crossover(cross_rows + [r for r in rows if r.n > max(cross_lengths)],
                             sorted(set(cross_lengths) | {r.n for r in rows}))
        report["crossover"] = {"lengths": cross_lengths, "first_faster_n": cross,
                               "recommended_dense_below": lb.recommended_dense_below(cross, cross_lengths),
                               "results": [r.to_json() for r in cross_rows]}
    _print(lb, rows, report)
    if out is not None:
        out.write_text(json.dumps(report, indent=1))
        typer.echo(f"wrote {out}")
    typer.echo(json.dumps(_summary(report)))


def _check_options(methods: str, gamma: float, exact_tail: int) -> list:
    """The sparse methods named, each with a valid config at these settings; else one line, exit 2."""
    from sharedattn.analysis.evaluation.layer_bench import config_for
    from sharedattn.analysis.method.method_config import MethodName

    allowed = [m.value for m in MethodName if m is not MethodName.DENSE]
    names = _csv(methods, str)
    bad = [m for m in names if m not in allowed] or ([] if names else ["(none)"])
    if bad:
        typer.echo(f"--methods: {bad[0]} is not one of {', '.join(allowed)}")
        raise typer.Exit(2)
    for name in names:
        config_for(MethodName(name), gamma, exact_tail)  # ConfigError: one line, exit 2 (cli_command)
    return [MethodName(m) for m in names]


def _run(lb, spec, lengths, device, timer, gamma, methods, fidelity=True, **opts) -> list:
    rows = []
    for n in lengths:
        _, got = lb.bench_length(spec, n, device, timer, gamma, methods, fidelity, log=typer.echo, **opts)
        rows.extend(got)
    return rows


def _print(lb, rows, report) -> None:
    typer.echo("")
    for line in lb.results_table(rows):
        typer.echo(line)
    if "crossover" in report:
        c = report["crossover"]
        typer.echo(f"\ncrossover (shortest N from which the whole layer beats dense): {c['first_faster_n']}")
        typer.echo(f"recommended dense_below: {c['recommended_dense_below']}")


def _summary(report: dict) -> dict:
    """The one JSON line: speedups and fidelity per (N, method, layer), plus the crossover."""
    keep = ("n", "method", "layer", "kernel", "ms", "dense_ms", "speedup", "density", "rel_error", "recall")
    doc = {"bench": "prefill", "gpu": report["gpu"],
           "results": [{k: (round(r[k], 5) if isinstance(r[k], float) else r[k]) for k in keep}
                       for r in report["results"]]}
    if "crossover" in report:
        doc["crossover"] = report["crossover"]["first_faster_n"]
        doc["recommended_dense_below"] = report["crossover"]["recommended_dense_below"]
    return doc


def register_into(bench_app: typer.Typer) -> None:
    bench_app.command("prefill")(cli_command(bench_prefill))
