"""`sharedattn heatmap`: block-mass heatmaps, mask overlays, similarity pictures, model summary.

One command, one figure per call; the view is chosen by a flag (`--similarity`, `--clustermap`,
`--across`, `--summary`; none: the heatmap) and drawn by analysis/plots/views.py. Records come from
`--record FILE` or are captured first from `[MODEL] PROMPT...` (default: the bundled model and prompt).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.method.method_config import DEFAULT_GAMMA
from sharedattn.analysis.offline.choices import Metric
from sharedattn.analysis.plots.choices import MaskKind, View

from .capturing import gather_records
from .common import (
    DEFAULT_OUT,
    DEFAULT_TOKENS,
    UserError,
    check_out_dir,
    cli_command,
    console,
    err_console,
    similarity_config,
)
from .options import (
    BlockSizeOpt,
    ClusterLookupOpt,
    DeviceOpt,
    DtypeOpt,
    FigureDirOpt,
    FigureOutOpt,
    InputsArg,
    LayerOpt,
    MaskGammaOpt,
    MetricOpt,
    ModelOpt,
    RandomInitOpt,
    RecordsOpt,
    TokensOpt,
    TruncateOpt,
)


def pick_view(similarity: bool, clustermap: bool, across: bool, summary: bool) -> View:
    chosen = [v for v, on in ((View.SIMILARITY, similarity), (View.CLUSTERMAP, clustermap),
                              (View.ACROSS, across), (View.SUMMARY, summary)) if on]
    if len(chosen) > 1:
        raise UserError("choose one of --similarity, --clustermap, --across, --summary")
    return chosen[0] if chosen else View.HEATMAP


def parse_head(text: str) -> Optional[int]:
    """``all`` -> None (every head); an integer -> that head."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--head must be a head number or 'all', got {text!r}") from None


def split_out(out: Optional[Path], out_dir: Path) -> tuple[Optional[Path], Path]:
    """``(figure file or None, folder)``: ``--out`` names the figure file, or, when it is an existing
    folder or has no suffix, the folder the figure goes to under its default name."""
    if out is not None and (out.is_dir() or not out.suffix):
        return None, out
    return out, out_dir


def check_target(out: Optional[Path], out_dir: Path) -> None:
    """Fail before any capture if the figure could not be written."""
    if out is None:
        check_out_dir(out_dir)
        return
    from sharedattn.analysis.plots.render import PlotError, check_output_path

    try:
        check_output_path(out)
    except PlotError as exc:
        raise UserError(str(exc)) from None


def method_layer_masks(rec, mask: MaskKind, layer: int, gamma: float, lookup: Optional[Path], choice):
    """Run ``mask``'s method on the record's own prompt and return its block masks ``[H, nqb, nkb]``
    for ``layer`` (the record's block size; dense_below 0 so short prompts show their pattern)."""
    from sharedattn.analysis.hf.prefill_run import run_prefill
    from sharedattn.analysis.method.method_config import MethodName, make_config

    from .common import load_prompts
    from .lookup_source import resolve_lookup

    loaded = choice.load()
    diff = loaded.fingerprint.mismatch(rec.meta.model)
    if diff:
        raise UserError(f"the record was captured with another model ({diff}); pass that model")
    prompt = load_prompts(loaded, [rec.meta.prompt.name], rec.meta.num_tokens, False)[0]
    if prompt.sha256 != rec.meta.prompt.sha256:
        raise UserError(f"cannot rebuild the record's prompt {rec.meta.prompt.name!r} exactly "
                        "(its tokens differ); capture it again")
    method = MethodName(mask.value)
    lookup_obj = resolve_lookup(lookup, loaded, choice)[0] if method is MethodName.SHAREPREFILL else None
    config = make_config(method, block_size=rec.meta.block_size, dense_below=0, gamma=gamma)
    with err_console.status(f"running {method.value} on {prompt.name} for its masks..."):
        run = run_prefill(loaded, prompt.input_ids, method, config, lookup_obj, keep_masks=True)
    return run.trace.masks[layer][0]


@cli_command
def heatmap(
    inputs: InputsArg = None,
    records: RecordsOpt = None,
    layer: LayerOpt = None,
    head: Annotated[str, typer.Option("--head", help="Head number, or 'all' for the layer's grid.")] = "all",
    mask: Annotated[Optional[MaskKind], typer.Option(
        "--mask", help="Outline the blocks a rule keeps: coverage (the head's own mask at --gamma), "
        "shared (the pivotal pattern of its shared cluster), or a method's mask on this prompt "
        "(runs the model; with --record, pass --model unless it is the bundled one).",
        show_default=False)] = None,
    gamma: MaskGammaOpt = DEFAULT_GAMMA,
    similarity: Annotated[bool, typer.Option("--similarity", help="Head-by-head similarity matrix.")] = False,
    clustermap: Annotated[bool, typer.Option("--clustermap", help="Clustermap with dendrogram.")] = False,
    across: Annotated[bool, typer.Option("--across", help="Pair similarities, prompt A vs prompt B.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Per-model summary: density per layer.")] = False,
    metric: MetricOpt = Metric.JACCARD,
    lookup: ClusterLookupOpt = None,
    out: FigureOutOpt = None,
    out_dir: FigureDirOpt = DEFAULT_OUT / "figures",
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    block_size: BlockSizeOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
) -> None:
    """Draw attention structure: block-mass heatmaps (log colour scale), mask overlays, similarity.

    Examples: `sharedattn heatmap --layer 12` (bundled model and prompt, all heads),
    `sharedattn heatmap --record rec.json --layer 3 --head 5 --mask coverage --out h.svg`,
    `sharedattn heatmap --record rec.json --clustermap`,
    `sharedattn heatmap stdlib-code stdlib-prose --across`, `sharedattn heatmap --summary`.
    """
    from sharedattn.analysis.plots.render import PlotError, save_figure
    from sharedattn.analysis.plots.views import default_name, make_figure

    view = pick_view(similarity, clustermap, across, summary)
    head_index = parse_head(head)
    similarity_config(metric, gamma, "worst")  # bad --gamma fails here, before any capture
    out, out_dir = split_out(out, out_dir)
    check_target(out, out_dir)
    model_for_masks = bool(records) and mask is not None and mask.is_method  # --model picks the runner
    recs = gather_records(inputs, records, None if model_for_masks else model,
                          None if model_for_masks else random_init, tokens, truncate, block_size, dtype,
                          device, min_prompts=2 if view is View.ACROSS else 1, why="--across")
    if view is View.HEATMAP and layer is None:
        layer = recs[0].meta.model.num_layers // 2
    if view is View.ACROSS and len(recs) > 2:
        err_console.print(f"[yellow]note:[/] --across compares the first two of {len(recs)} prompts")
    target = out if out is not None else out_dir / default_name(recs[0], view, layer, head_index, mask, metric)
    method_masks = None
    if mask is not None and mask.is_method and view is View.HEATMAP:
        from sharedattn.analysis.plots import heatmaps

        from .common import ModelChoice

        try:
            heatmaps.check_layer(recs[0], layer)
        except PlotError as exc:
            raise UserError(str(exc)) from None
        choice = ModelChoice(model if records else _model_of(inputs, model), random_init, dtype, device)
        method_masks = method_layer_masks(recs[0], mask, layer, gamma, lookup, choice)
    try:
        with err_console.status(f"drawing {view.value}..."):
            fig = make_figure(recs, view, layer=layer, head=head_index, mask=mask, gamma=gamma, metric=metric,
                              lookup=lookup, method_masks=method_masks,
                              note=lambda msg: err_console.print(f"[yellow]note:[/] {msg}"))
            if out is None:
                out_dir.mkdir(parents=True, exist_ok=True)
            path = save_figure(fig, target)
    except PlotError as exc:
        raise UserError(str(exc)) from None
    console.print(f"figure: {path}", soft_wrap=True)


def _model_of(inputs, model):
    from .common import split_inputs

    return split_inputs(inputs, model)[0]


def register(app: typer.Typer) -> None:
    app.command("heatmap")(heatmap)
