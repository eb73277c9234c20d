"""`sharedattn matched RESULTS.json...`: methods at matched density over compare runs at several gammas."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import UserError, cli_command, console
from .options import JsonOpt
from .tables import matched_table


def _load(paths: list[Path]) -> list[tuple[str, dict]]:
    import json

    docs = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"compare results not found: {str(path)!r}")
        try:
            docs.append((str(path), json.loads(path.read_text())))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{str(path)!r} is not a JSON file ({exc})") from None
    return docs


@cli_command
def matched(
    results: Annotated[list[Path], typer.Argument(help="results.json files of `sharedattn compare` runs "
                                                    "(same model and prompts; typically one per --gamma).")],
    method: Annotated[str, typer.Option("--method", help="The method (or curve label) whose points are "
                                                         "compared.")] = "shareprefill",
    tokens: Annotated[Optional[int], typer.Option("--tokens", help="Only the prompts of this many tokens.")] = None,
    figure: Annotated[Optional[Path], typer.Option("--figure", help="Also draw the KL curves here (.png/.svg/.pdf).")
                      ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare methods at equal density: each baseline's curve over the runs, read at the method's density.

    Examples: `for g in 0.9 0.95 0.97; do sharedattn compare --gamma $g -o out/g$g; done;
    sharedattn matched out/g*/results.json`, `sharedattn matched out/g*/results.json --tokens 8192`.
    """
    from sharedattn.analysis.evaluation.matched_density import build_curves, matched_rows

    docs = _load(results)
    curves = build_curves(docs, tokens)
    rows = matched_rows(curves, method)
    if figure is not None:
        from sharedattn.analysis.plots.compare_plots import matched_curves_figure
        from sharedattn.analysis.plots.render import PlotError

        try:
            matched_curves_figure(curves, "kl_mean", f"final-logit KL against density ({len(docs)} runs)", figure)
        except PlotError as exc:
            raise UserError(str(exc)) from None
    if json_out:
        import json

        curves_json = [{"label": c.label, "method": c.method, "points": [vars(p) for p in c.points]} for c in curves]
        typer.echo(json.dumps({"method": method, "tokens": tokens, "rows": rows, "curves": curves_json}))
        return
    for c in curves:
        pts = ", ".join(f"{'-' if p.gamma is None else f'{p.gamma:g}'}: {p.density:.3f}" for p in c.points)
        console.print(f"[dim]{c.label}: gamma: density {pts}[/]", soft_wrap=True)
    console.print(matched_table(rows, method, tokens))
    if figure is not None:
        console.print(f"figure: {figure}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("matched")(matched)
