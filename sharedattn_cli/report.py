"""`sharedattn report [MODEL] PROMPT... -o DIR`: one self-contained HTML page about a model.

The page holds the model summary, the similarity findings, cross-input consistency (2+ prompts),
the cluster table and the figures, all embedded: it opens offline, with no network assets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sharedattn.analysis.method.method_config import DEFAULT_GAMMA, check_fraction
from sharedattn.analysis.offline.choices import Metric
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
    ClusterLookupOpt,
    DeviceOpt,
    DtypeOpt,
    InputsArg,
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

REPORT_NAME = "report.html"


def load_lookup_for(path: Optional[Path], records):
    if path is None:
        return None
    from sharedattn.analysis.offline.lookup import check_lookup_model, load_lookup

    lookup = load_lookup(path)
    check_lookup_model(lookup, records[0].meta.model, check_id=False)
    return lookup


@cli_command
def report(
    inputs: InputsArg = None,
    records: RecordsOpt = None,
    out: OutDirOpt = DEFAULT_OUT / "report",
    metric: MetricOpt = Metric.JACCARD,
    gamma: MaskGammaOpt = DEFAULT_GAMMA,
    threshold: ThresholdOpt = DEFAULT_ALIKE,
    lookup: ClusterLookupOpt = None,
    model: ModelOpt = None,
    random_init: RandomInitOpt = None,
    tokens: TokensOpt = DEFAULT_TOKENS,
    truncate: TruncateOpt = False,
    block_size: BlockSizeOpt = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
) -> None:
    """Write one self-contained HTML report (figures embedded) about a model's attention.

    Examples: `sharedattn report stdlib-code stdlib-prose -o out/report`,
    `sharedattn report --record a.json --record b.json --lookup smollm2.lookup.json -o out/r`.
    Give two or more prompts for the cross-input section.
    """
    from sharedattn.analysis.plots.render import PlotError
    from sharedattn.analysis.plots.report_content import ReportOptions, write_model_report

    similarity_config(metric, gamma, "worst")  # bad --gamma fails before any capture
    check_fraction("--threshold", threshold, low_open=False)
    check_out_dir(out)
    recs = gather_records(inputs, records, model, random_init, tokens, truncate, block_size, dtype, device)
    table = load_lookup_for(lookup, recs)
    out.mkdir(parents=True, exist_ok=True)
    options = ReportOptions(metric=metric.value, gamma=gamma, threshold=threshold)
    try:
        with err_console.status(f"analysing {len(recs)} record(s) and drawing figures..."):
            path = write_model_report(out / REPORT_NAME, recs, options, table)
    except PlotError as exc:
        raise UserError(str(exc)) from None
    console.print(f"report: {path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
