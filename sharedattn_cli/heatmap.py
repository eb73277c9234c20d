"""`sharedattn heatmap`: block-mass heatmaps, mask overlays, similarity pictures, model summary.

One command, one figure per call; the view is chosen by a flag (`--similarity`, `--clustermap`,
`--across`, `--summary`; none: the heatmap). Records come from `--record FILE` or are captured
first from `[MODEL] PROMPT...` (default: the bundled model and prompt).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharedattn.analysis.offline.choices import Metric
from sharedattn.analysis.plots.choices import MaskKind, View

from .common import (DEFAULT_OUT, DEFAULT_TOKENS, BlockSizeOpt, DeviceOpt, DtypeOpt, InputsArg, ModelOpt,
                     RandomInitOpt, TokensOpt, TruncateOpt, UserError, check_out_dir, cli_command, console,
                     err_console)
from .similarity import GammaOpt, MetricOpt, gather_records, similarity_config

RecordOpt = Annotated[Optional[list[Path]], typer.Option(
    "--record", "--records", "-r", help="Attention record(s) of `sharedattn capture` (.json or "
    ".safetensors) instead of capturing; `--across` takes two.", show_default=False)]
LookupOpt = Annotated[Optional[Path], typer.Option(
    "--lookup", help="Lookup file (`sharedattn lookup`): its clusters drive `--mask shared` and "
    "`--summary` (default: cluster this record's heads with the `cluster` defaults).", show_default=False)]
FigureOutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Figure file; the suffix picks the format: .png, .svg or .pdf.", show_default=False)]
FigureDirOpt = Annotated[Path, typer.Option(
    "--out-dir", "-o", help="Folder for the figure when --out is not given.")]


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).stem if "/" in text else text).strip("_")[:40] or "x"


def default_name(rec, view: View, layer: Optional[int], head: Optional[int], mask: Optional[MaskKind],
                 metric: Metric) -> str:
    base = f"{_slug(rec.meta.model.model_id)}-{_slug(rec.meta.prompt.name)}"
    if view is View.HEATMAP:
        name = f"{base}-L{layer}-{'all' if head is None else f'H{head}'}"
        return name + (f"-{mask.value}" if mask else "") + ".png"
    if view is View.SUMMARY:
        return f"{base}-summary.png"
    return f"{base}-{view.value}-{metric.value}.png"


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


def load_clusters(lookup_path: Optional[Path], records, gamma: float, metric: Metric):
    """A lookup (checked against the records' model) or a fresh clustering of the records' heads."""
    fp = records[0].meta.model
    if lookup_path is not None:
        from sharedattn.analysis.offline.lookup import check_lookup_model, load_lookup

        lookup = load_lookup(lookup_path)
        check_lookup_model(lookup, fp, check_id=False)
        return lookup
    from sharedattn.analysis.offline.clustering import ClusterConfig, cluster_heads
    from sharedattn.analysis.offline.similarity import mean_similarity, similarity_matrices

    config = similarity_config(metric, gamma, "worst")
    return cluster_heads(mean_similarity(similarity_matrices(records, config)), fp.num_heads, ClusterConfig())


def heatmap_view(rec, layer: int, head: Optional[int], mask: Optional[MaskKind], gamma: float, clusters,
                 method_masks=None):
    from sharedattn.analysis.plots import heatmaps

    heatmaps.check_layer(rec, layer)
    if head is not None:
        heatmaps.check_head(rec, head)
    heads = range(rec.meta.model.num_heads) if head is None else [head]
    overlays = {}
    for h in heads:
        if mask is MaskKind.COVERAGE:
            overlays[h] = heatmaps.coverage_overlay(rec.block_mass[layer, h], gamma)
        elif mask is MaskKind.SHARED:
            ov = heatmaps.shared_overlay(rec, clusters, layer, h, gamma)
            if ov is not None:
                overlays[h] = ov
        elif mask is not None and mask.is_method:
            overlays[h] = heatmaps.MaskOverlay(method_masks[h].numpy(), f"{mask.value} mask", mask.value)
    if mask is MaskKind.SHARED and not overlays:
        which = "this head is" if head is not None else f"no head of layer {layer} is"
        err_console.print(f"[yellow]note:[/] {which} in a shared cluster: nothing outlined")
    if head is not None:
        return heatmaps.heatmap_figure(rec, layer, head, overlay=overlays.get(head))
    title = {MaskKind.COVERAGE: f"coverage mask at gamma {gamma:g}",
             MaskKind.SHARED: f"pivotal pattern each head would share (gamma {gamma:g})"}.get(
        mask, f"blocks {mask.value} kept on this prompt" if mask else "")
    return heatmaps.head_grid_figure(rec, layer, overlays=overlays, overlay_title=title)


def similarity_view(records, view: View, metric: Metric, gamma: float):
    from sharedattn.analysis.plots import similarity_plots as sp
    from sharedattn.analysis.offline.similarity import mean_similarity, similarity_matrices

    fp = records[0].meta.model
    matrices = similarity_matrices(records, similarity_config(metric, gamma, "worst"))
    names = [r.meta.prompt.name for r in records]
    gamma_note = f", gamma {gamma:g}" if metric is Metric.JACCARD else ""
    if view is View.ACROSS:
        return sp.across_figure(matrices[0], matrices[1], fp.num_layers, fp.num_heads, label_a=names[0],
                                label_b=names[1], metric=metric.value,
                                title=f"{fp.model_id}: {metric.value} similarity of head pairs{gamma_note}")
    title = (f"{fp.model_id}: {metric.value} similarity{gamma_note}\n"
             f"{'mean over ' + str(len(records)) + ' prompts' if len(records) > 1 else names[0]}, "
             f"{records[0].meta.num_tokens:,} tokens")
    draw = sp.similarity_figure if view is View.SIMILARITY else sp.clustermap_figure
    return draw(mean_similarity(matrices), fp.num_layers, fp.num_heads, title=title, metric=metric.value)


def summary_view(records, gamma: float, clusters, source: str):
    import numpy as np

    from sharedattn.analysis.plots import summary

    fp = records[0].meta.model
    dens = np.mean([summary.head_densities(r, gamma) for r in records], axis=0)
    shared = summary.shared_head_matrix(clusters, fp.num_layers, fp.num_heads)
    title = (f"{fp.model_id}: density at gamma {gamma:g} per layer; "
             f"{len(records)} prompt(s), {records[0].meta.num_tokens:,} tokens")
    return summary.summary_figure(dens, title=title, gamma=gamma, shared=shared, shared_source=source)


def make_figure(records, view: View, *, layer: Optional[int], head: Optional[int], mask: Optional[MaskKind],
                gamma: float, metric: Metric, lookup: Optional[Path], method_masks=None):
    rec = records[0]
    if view in (View.SIMILARITY, View.CLUSTERMAP, View.ACROSS):
        return similarity_view(records, view, metric, gamma)
    needs_clusters = view is View.SUMMARY or mask is MaskKind.SHARED
    clusters = load_clusters(lookup, records, gamma, metric) if needs_clusters else None
    source = "from the lookup" if lookup else "clusters of these records' heads"
    if view is View.SUMMARY:
        return summary_view(records, gamma, clusters, source)
    return heatmap_view(rec, layer, head, mask, gamma, clusters, method_masks)


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
    records: RecordOpt = None,
    layer: Annotated[Optional[int], typer.Option("--layer", "-l", help="Layer to draw (default: the middle "
                                                 "layer).", show_default=False)] = None,
    head: Annotated[str, typer.Option("--head", help="Head number, or 'all' for the layer's grid.")] = "all",
    mask: Annotated[Optional[MaskKind], typer.Option(
        "--mask", help="Outline the blocks a rule keeps: coverage (the head's own mask at --gamma), "
        "shared (the pivotal pattern of its shared cluster), or a method's mask on this prompt "
        "(runs the model; with --record, pass --model unless it is the bundled one).",
        show_default=False)] = None,
    gamma: GammaOpt = 0.95,
    similarity: Annotated[bool, typer.Option("--similarity", help="Head-by-head similarity matrix.")] = False,
    clustermap: Annotated[bool, typer.Option("--clustermap", help="Clustermap with dendrogram.")] = False,
    across: Annotated[bool, typer.Option("--across", help="Pair similarities, prompt A vs prompt B.")] = False,
    summary: Annotated[bool, typer.Option("--summary", help="Per-model summary: density per layer.")] = False,
    metric: MetricOpt = Metric.JACCARD,
    lookup: LookupOpt = None,
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

    view = pick_view(similarity, clustermap, across, summary)
    head_index = parse_head(head)
    similarity_config(metric, gamma, "worst")  # bad --gamma fails here, before any capture
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
            fig = make_figure(recs, view, layer=layer, head=head_index, mask=mask, gamma=gamma,
                              metric=metric, lookup=lookup, method_masks=method_masks)
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
