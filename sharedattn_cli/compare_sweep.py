"""`sharedattn compare --gammas G1,G2,...`: the whole comparison at each gamma, then the methods at
equal density (each baseline's curve over the gammas read at the target method's densities)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer

from .common import console, err_console
from .tables import matched_table


def sweep_target(methods) -> str | None:
    """shareprefill when it runs, else the last sparse method listed; None with dense alone."""
    names = [m.value for m in methods if m.value != "dense"]
    if not names:
        return None
    return "shareprefill" if "shareprefill" in names else names[-1]


def run_sweep(runs: list, cfg, *, out: Path, figures: bool, json_out: bool,
              run_one: Callable[[dict, Path], Optional[dict]]) -> None:
    """``runs``: ``[(gamma, configs)]``; ``run_one(configs, folder)`` runs and writes one comparison
    (None under torchrun on ranks other than 0, which write nothing)."""
    from sharedattn.analysis.evaluation.matched_density import build_curves, matched_rows
    from sharedattn.analysis.files.atomic import write_text_atomic

    docs = []
    for gamma, configs in runs:
        sub = out / f"gamma-{gamma:g}"
        err_console.print(f"[bold]gamma {gamma:g}[/] -> {sub}")
        doc = run_one(configs, sub)
        if doc is not None:
            docs.append((str(sub / "results.json"), doc))
    if not docs:  # under torchrun, a rank other than 0: it ran its share of every gamma
        return
    target = sweep_target(cfg.methods)
    if target is None:
        err_console.print("[yellow]note:[/] only dense ran, so there is nothing to compare at equal density")
        return
    curves = build_curves(docs)
    rows = matched_rows(curves, target)
    doc = {"method": target, "gammas": [g for g, _ in runs], "runs": [name for name, _ in docs], "rows": rows}
    write_text_atomic(out / "matched.json", json.dumps(doc, indent=1) + "\n")
    doc["outputs"] = {"matched_json": str(out / "matched.json")}
    if figures:
        from sharedattn.analysis.plots.compare_plots import matched_curves_figure

        title = f"{docs[0][1]['model']['model_id']}: final-logit KL against density over gammas"
        doc["outputs"]["figure"] = str(matched_curves_figure(curves, "kl_mean", title, out / "matched-kl.png"))
    if json_out:
        typer.echo(json.dumps(doc))
        return
    console.print(matched_table(rows, target, None))
    console.print(f"[dim]written: {', '.join(doc['outputs'].values())}[/]", soft_wrap=True)
