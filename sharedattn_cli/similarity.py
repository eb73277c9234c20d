"""`sharedattn similarity [MODEL] PROMPT...` or `--records FILE...`: how alike are the heads?"""
from __future__ import annotations

from typing import Annotated

import typer

from sharedattn.analysis.method.method_config import DEFAULT_GAMMA, check_fraction
from sharedattn.analysis.offline.choices import JsCombine, Metric
from sharedattn.analysis.offline.cluster_config import DEFAULT_ALIKE

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
    DeviceOpt,
    DtypeOpt,
    InputsArg,
    JsCombineOpt,
    JsonOpt,
    MaskGammaOpt,
    MetricOpt,
    ModelOpt,
    OutDirOpt,
    RandomInitOpt,
    RecordsOpt,
    ThresholdOpt,
    TokensOpt,
    TruncateOpt,
)


def _summary_table(summary, num_prompts: int):
    from rich.table import Table

    t = Table(title=f"head similarity ({summary.metric}, mean over {num_prompts} prompt(s))")
    t.add_column("pairs")
    t.add_column(f"share > {summary.threshold:g}", justify="right")
    t.add_column("mean", justify="right")
    t.add_row("within layers", f"{summary.share_within:.1%}", f"{summary.mean_within:.3f}")
    t.add_row("across layers", f"{summary.share_across:.1%}", f"{summary.mean_across:.3f}")
    return t


def _layers_table(summary, show: int = 3):
    from rich.table import Table

    t = Table(title="most and least shareable layers (mean best-partner similarity)")
    for col in ("rank", "layer", "mean best", "share of pairs > threshold"):
        t.add_column(col, justify="right")
    layers = summary.layers
    picks = list(enumerate(layers))[:show] + list(enumerate(layers))[max(show, len(layers) - show):]
    for rank, s in picks:
        t.add_row(str(rank + 1), str(s.layer), f"{s.mean_best:.3f}", f"{s.share_above:.1%}")
    return t


def _partners_table(summary, show: int = 10):
    from rich.table import Table

    t = Table(title=f"closest partners (the {show} most and least paired heads; all in the .partners.csv)")
    for col in ("head", "closest partner", "similarity"):
        t.add_column(col)
    ranked = sorted(summary.partners, key=lambda p: -p.similarity)
    picks = ranked if len(ranked) <= 2 * show else ranked[:show] + ranked[-show:]
    for p in picks:
        t.add_row(f"L{p.layer}H{p.head}", f"L{p.partner_layer}H{p.partner_head}", f"{p.similarity:.3f}")
    return t


def _consistency_table(report, names: list[str]):
    from rich.table import Table

    t = Table(title=f"cross-input consistency (top-{report.top_k} chance overlap "
                    f"{report.chance_top_k_overlap:.3f})")
    for col in ("prompt A", "prompt B", "Spearman", f"top-{report.top_k} overlap", "own-pattern Jaccard"):
        t.add_column(col)
    for p in report.pairs:
        t.add_row(names[p.prompt_a], names[p.prompt_b], f"{p.spearman:.3f}", f"{p.top_k_overlap:.3f}",
                  f"{p.own_jaccard:.3f}")
    t.add_row("mean", "", f"{report.mean_spearman:.3f}", f"{report.mean_top_k_overlap:.3f}",
              f"{report.mean_own_jaccard:.3f}", style="bold")
    return t


def _record_json(rec) -> dict:
    m = rec.meta
    return {"prompt": m.prompt.name, "sha256": m.prompt.sha256, "num_tokens": m.num_tokens}


@cli_command
def similarity(
    inputs: InputsArg = None,
    records: RecordsOpt = None,
    metric: MetricOpt = Metric.JACCARD,
    gamma: MaskGammaOpt = DEFAULT_GAMMA,
    threshold: ThresholdOpt = DEFAULT_ALIKE,
    js_combine: JsCombineOpt = JsCombine.WORST,
    across: Annotated[bool, typer.Option("--across", help="Cross-input consistency over 2+ prompts.")] = False,
    top_k: Annotated[int, typer.Option("--top-k", help="Neighbours compared by --across.")] = 5,
    out: OutDirOpt = DEFAULT_OUT / "similarity",
    json_out: JsonOpt = False,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    block_size: BlockSizeOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
) -> None:
    """Similarity of every pair of (layer, head), within and across layers.

    Examples: `sharedattn similarity --records recs/*.json --metric js`,
    `sharedattn similarity stdlib-code passkey --tokens 4096 --across`,
    `sharedattn similarity --records a.json --records b.json --across --json`.
    Writes the (mean) matrix as .npy and .csv, and each head's closest partner, to --out.
    """
    from sharedattn.analysis.offline.consistency import consistency
    from sharedattn.analysis.offline.similarity import mean_similarity, similarity_matrices
    from sharedattn.analysis.offline.similarity_report import summarize

    config = similarity_config(metric, gamma, js_combine)
    check_fraction("--threshold", threshold, low_open=False)
    recs = gather_records(inputs, records, model, random_init, tokens, truncate, block_size, dtype, device,
                          min_prompts=2 if across else 1, why="--across")
    fp = recs[0].meta.model
    if across and not (1 <= top_k < fp.num_layers * fp.num_heads):
        raise UserError(f"--top-k must be in [1, {fp.num_layers * fp.num_heads - 1}], got {top_k}")
    with err_console.status(f"{metric.value} similarity of {fp.num_layers * fp.num_heads} heads..."):
        matrices = similarity_matrices(recs, config)
        matrix = mean_similarity(matrices)
        windows = recs[0].meta.windows
        summary = summarize(matrix, fp.num_layers, fp.num_heads, metric.value, threshold, windows)
        report = consistency(recs, matrices, top_k=top_k, gamma=gamma) if across else None
    from sharedattn.analysis.offline.similarity_report import save_similarity

    check_out_dir(out)
    files = save_similarity(out, metric.value, matrix, summary, fp.num_layers, fp.num_heads)
    if json_out:
        import json

        doc = {"model": fp.to_json(), "config": config.to_json(), "records": [_record_json(r) for r in recs],
               "summary": summary.to_json(), "consistency": report.to_json() if report else None,
               "files": files}
        typer.echo(json.dumps(doc))
        return
    if len(set(windows)) > 1:
        console.print(f"local (sliding-window) layers {list(summary.local_layers)}: heads are compared only "
                      "with heads of the same kind of layer (cross-kind pairs: similarity 0, left out below)")
    console.print(_summary_table(summary, len(recs)))
    console.print(_layers_table(summary))
    console.print(_partners_table(summary))
    if report is not None:
        console.print(_consistency_table(report, [r.meta.prompt.name for r in recs]))
    console.print(f"matrix: {files['npy']}, {files['csv']}; partners: {files['partners']}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("similarity")(similarity)
