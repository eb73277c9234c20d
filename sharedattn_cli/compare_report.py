"""Outputs of `sharedattn compare`: results JSON, CSV, per-head traces, figures, rich tables."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from rich.table import Table

from .common import UserError


def _fmt(value, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _write(path: Path, text: str) -> None:
    from sharedattn.analysis.files.atomic import write_text_atomic

    write_text_atomic(path, text)


def _figures(out: Path, result, meta: dict) -> dict:
    from sharedattn.analysis.evaluation.tasks import TaskKind
    from sharedattn.analysis.plots.compare_plots import density_error_figure, passkey_grid_figure

    model = meta["model"]["model_id"]
    figures = {}
    if any(r.method != "dense" and r.error_mean is not None for r in result.rows):
        figures["density_error"] = str(density_error_figure(
            result.rows, f"{model}: density vs attention-output error (one point per method and prompt)",
            out / "density-error.png"))
    if any(r.kind == TaskKind.PASSKEY.value for r in result.rows):
        figures["passkey_grid"] = str(passkey_grid_figure(
            result.rows, f"{model}: passkey retrieval (green: answer found)", out / "passkey-grid.png"))
    return figures


def write_outputs(out: Path, result, meta: dict, *, csv_path: Optional[Path], figures: bool) -> dict:
    """results.json, results.csv and traces.json in ``out`` (and the CSV at ``csv_path``); figures."""
    from sharedattn.analysis.evaluation.compare import trace_notes

    doc = {**meta, **result.to_json(), "trace_notes": trace_notes(result)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        csv_text = result.to_csv()
        _write(out / "results.csv", csv_text)
        if csv_path is not None:
            _write(csv_path, csv_text)
        heads = [{"method": r.method.value, "prompt": r.prompt, "heads": r.trace.head_rows()}
                 for r in result.records if r.method.value != "dense"]
        _write(out / "traces.json", json.dumps(heads) + "\n")
        doc["outputs"] = {"results_json": str(out / "results.json"), "results_csv": str(out / "results.csv"),
                          "traces_json": str(out / "traces.json"), "prompts": meta["prompts_file"]}
        if csv_path is not None:
            doc["outputs"]["csv"] = str(csv_path)
        if figures:
            doc["outputs"].update(_figures(out, result, meta))
        _write(out / "results.json", json.dumps(doc, indent=1) + "\n")
    except OSError as exc:
        raise UserError(f"cannot write to {str(out)!r} ({exc.strerror or exc})") from None
    return doc


def summary_table(doc: dict) -> Table:
    table = Table(title=f"{doc['model']['model_id']}: every method against dense, same prompts, same run")
    for name in ("method", "density", "recall", "err mean", "err worst", "KL mean", "top-1",
                 "final top-1", "d loglik", "task", "dense-right kept", "time s"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for s in doc["summary"]:
        task = "-" if s["task_correct"] is None else f"{s['task_correct']}/{s['task_total']}"
        kept = "-" if not s.get("dense_right") else f"{s['kept_right']}/{s['dense_right']}"
        table.add_row(s["method"], _fmt(s["density"]), _fmt(s["recall"], ".4f"), _fmt(s["error_mean"], ".4f"),
                      _fmt(s["error_worst"], ".4f"), _fmt(s["kl_mean"], ".2e"), _fmt(s["top1"]),
                      _final_top1(s), _fmt(s["loglik_delta"], "+.4f"), task, kept,
                      _fmt(s["seconds"], ".1f"))
    return table


def _final_top1(s: dict) -> str:
    ties = s.get("top1_last_near_tie_flips") or 0
    return f"{s['top1_last']}/{s['prompts']}" + (f" ({ties} near-tie)" if ties else "")


def rows_table(doc: dict) -> Table:
    table = Table(title="per prompt")
    for name in ("prompt", "tokens", "method", "density", "recall", "err mean", "KL mean", "top-1",
                 "d loglik", "answer"):
        table.add_column(name, justify="left" if name in ("prompt", "method") else "right")
    for r in doc["rows"]:
        answer = "-" if r["correct"] is None else ("ok" if r["correct"] else "miss")
        table.add_row(r["prompt"], str(r["tokens"]), r["method"], _fmt(r["density"]), _fmt(r["recall"], ".4f"),
                      _fmt(r["error_mean"], ".4f"), _fmt(r["kl_mean"], ".2e"), _fmt(r["top1"]),
                      _fmt(r["loglik_delta"], "+.4f"), answer)
    return table


def print_tables(console, doc: dict, result) -> None:
    console.print(rows_table(doc))
    console.print(summary_table(doc))
    for note in doc["skipped"]:
        console.print(f"[yellow]skipped:[/] {note}")
    if doc["device"] == "cpu":
        console.print("[dim]times: torch reference kernels on the CPU, instrumented runs; not a speed claim[/]")
    console.print(f"[dim]written: {', '.join(doc['outputs'].values())}[/]")
