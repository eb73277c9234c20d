"""The model report's content: numbers, tables and figures computed from attention records.

``build_sections`` runs the analyses (similarity per prompt and its mean, summary, clustering or
a given lookup, densities at gamma, cross-input consistency for 2+ prompts) and turns them into
``report.ReportSection`` objects; ``write_model_report`` writes the page.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files.records import AttentionRecord
from ..method.method_config import DEFAULT_GAMMA
from ..offline.cluster_config import DEFAULT_ALIKE
from . import heatmaps, render, similarity_plots, summary
from .report import ReportFigure, ReportSection, ReportTable, write_report

MAX_CLUSTER_ROWS = 25  # clusters listed in the table (largest first)
MAX_HEADS_LISTED = 12  # heads named per cluster row


@dataclass(frozen=True)
class ReportOptions:
    metric: str = "jaccard"
    gamma: float = DEFAULT_GAMMA
    threshold: float = DEFAULT_ALIKE  # a pair is "alike" above this


@dataclass(frozen=True)
class Analysis:
    """Everything the page shows, computed once."""
    records: tuple[AttentionRecord, ...]
    matrices: tuple  # one [P, P] similarity matrix per record
    mean: object  # [P, P] mean over records
    summary: object  # similarity_report.SimilaritySummary
    clusters: object  # clustering.Clustering or lookup.Lookup (anything with .clusters/.shared_clusters)
    cluster_source: str
    densities: np.ndarray  # [L, H] mean over records of each head's density at gamma
    consistency: object | None  # consistency.ConsistencyReport for 2+ records
    gamma: float


def analyse(records: list[AttentionRecord], options: ReportOptions, lookup=None) -> Analysis:
    """Run every analysis the page needs (``lookup``: use its clusters instead of clustering)."""
    from ..offline.clustering import ClusterConfig, cluster_heads
    from ..offline.consistency import consistency
    from ..offline.similarity import SimilarityConfig, mean_similarity, similarity_matrices
    from ..offline.similarity_report import summarize

    fp = records[0].meta.model
    config = SimilarityConfig(metric=options.metric, gamma=options.gamma)
    matrices = similarity_matrices(records, config)
    mean = mean_similarity(matrices)
    summ = summarize(mean, fp.num_layers, fp.num_heads, config.metric.value, options.threshold)
    if lookup is not None:
        clusters, source = lookup, "the given lookup"
    else:
        clusters = cluster_heads(mean, fp.num_heads, ClusterConfig())
        source = "average linkage on 1 - mean similarity, cut at 0.5 (`sharedattn cluster` defaults)"
    dens = np.mean([summary.head_densities(r, options.gamma) for r in records], axis=0)
    cons = consistency(records, matrices, gamma=options.gamma) if len(records) > 1 else None
    return Analysis(tuple(records), tuple(matrices), mean, summ, clusters, source, dens, cons, options.gamma)


def _png(fig) -> bytes:
    return render.png_bytes(fig)


def model_section(a: Analysis, options: ReportOptions) -> ReportSection:
    fp = a.records[0].meta.model
    meta = a.records[0].meta
    model_rows = (("model", fp.model_id), ("layers x query heads", f"{fp.num_layers} x {fp.num_heads}"),
                  ("KV heads, head dim", f"{fp.num_kv_heads}, {fp.head_dim}"),
                  ("context length", f"{fp.max_positions:,}"), ("block size", str(meta.block_size)),
                  ("gamma, metric", f"{options.gamma:g}, {options.metric}"))
    prompts = tuple((r.meta.prompt.name, f"{r.meta.num_tokens:,}", str(r.meta.num_blocks),
                     r.meta.prompt.sha256[:12], r.meta.prompt.preview[:80]) for r in a.records)
    shared = summary.shared_head_matrix(a.clusters, fp.num_layers, fp.num_heads)
    fig = summary.summary_figure(a.densities, gamma=options.gamma, shared=shared,
                                 shared_source="clusters below",
                                 title=f"{fp.model_id}: per-layer density at gamma {options.gamma:g}, "
                                       f"mean over {len(a.records)} prompt(s)")
    d = a.densities
    items = (f"Mean density of the coverage masks at gamma {options.gamma:g}: {d.mean():.1%} "
             f"(median head {np.median(d):.1%}, densest head {d.max():.1%}, sparsest {d.min():.1%}).",
             f"Densest layer {int(d.mean(1).argmax())} ({d.mean(1).max():.1%}); sparsest layer "
             f"{int(d.mean(1).argmin())} ({d.mean(1).min():.1%}).",
             f"{shared.mean():.0%} of heads sit in shared clusters.")
    return ReportSection(
        "Model summary", "model", items=items,
        tables=(ReportTable("model and capture", ("field", "value"), model_rows),
                ReportTable("prompts", ("prompt", "tokens", "blocks", "sha256", "preview"), prompts,
                            (False, True, True))),
        figures=(ReportFigure("Per-model summary", "Top: each head's coverage-mask density (kept / causal "
                              "blocks) per layer; bottom: share of each layer's heads in shared clusters.",
                              _png(fig)),))


def similarity_section(a: Analysis, options: ReportOptions) -> ReportSection:
    fp = a.records[0].meta.model
    s = a.summary
    title = f"{fp.model_id}: {options.metric} similarity, mean over {len(a.records)} prompt(s)"
    items = [f"{s.share_within:.1%} of same-layer pairs and {s.share_across:.1%} of cross-layer pairs score "
             f"above {s.threshold:g} (means {s.mean_within:.3f} and {s.mean_across:.3f}).",
             "Most shareable layers (mean best-partner similarity): " +
             ", ".join(f"L{x.layer} ({x.mean_best:.2f})" for x in s.layers[:3]) + "; least: " +
             ", ".join(f"L{x.layer} ({x.mean_best:.2f})" for x in s.layers[-3:]) + "."]
    top = sorted((p for p in s.partners if p.layer != p.partner_layer), key=lambda p: -p.similarity)[:10]
    rows = tuple((f"L{p.layer}H{p.head}", f"L{p.partner_layer}H{p.partner_head}", f"{p.similarity:.3f}")
                 for p in top)
    figures = [ReportFigure("Similarity matrix", "Heads in layer-major order; white lines mark layer "
                            "boundaries.", _png(similarity_plots.similarity_figure(
                                a.mean, fp.num_layers, fp.num_heads, title=title, metric=options.metric)))]
    if fp.num_layers * fp.num_heads <= similarity_plots.CLUSTERMAP_MAX_HEADS:
        figures.append(ReportFigure("Clustermap", "Rows and columns reordered by hierarchical clustering; "
                                    "the colour strips give each head's layer.", _png(
                                        similarity_plots.clustermap_figure(a.mean, fp.num_layers, fp.num_heads,
                                                                           title=title, metric=options.metric))))
    return ReportSection("Similarity findings", "similarity", items=tuple(items), figures=tuple(figures),
                         tables=(ReportTable("closest cross-layer partners", ("head", "partner", "similarity"),
                                             rows, (False, False, True)),))


def consistency_section(a: Analysis, options: ReportOptions) -> ReportSection | None:
    if a.consistency is None:
        return None
    fp = a.records[0].meta.model
    c = a.consistency
    names = [r.meta.prompt.name for r in a.records]
    rows = tuple((names[p.prompt_a], names[p.prompt_b], f"{p.spearman:.3f}", f"{p.top_k_overlap:.3f}",
                  f"{p.own_jaccard:.3f}") for p in c.pairs)
    fig = similarity_plots.across_figure(a.matrices[0], a.matrices[1], fp.num_layers, fp.num_heads,
                                         label_a=names[0], label_b=names[1], metric=options.metric,
                                         title=f"{fp.model_id}: pair similarity, prompt A vs prompt B")
    items = (f"Mean Spearman correlation of the similarity matrices across prompts: {c.mean_spearman:.3f}; "
             f"top-{c.top_k} neighbour overlap {c.mean_top_k_overlap:.3f} (chance {c.chance_top_k_overlap:.3f}); "
             f"each head's own pattern overlaps itself across prompts at Jaccard {c.mean_own_jaccard:.3f}.",)
    return ReportSection(
        "Cross-input consistency", "consistency", items=items,
        tables=(ReportTable("prompt pairs", ("prompt A", "prompt B", "Spearman", f"top-{c.top_k} overlap",
                                             "own-pattern Jaccard"), rows, (False, False, True, True, True)),),
        figures=(ReportFigure("Across prompts", "Every head pair's similarity under the first two prompts; "
                              "points near the diagonal keep their similarity.", _png(fig)),))


def cluster_section(a: Analysis) -> ReportSection:
    clusters = sorted(a.clusters.clusters, key=lambda c: (-c.size, c.id))
    multi = [c for c in clusters if c.size > 1]
    rows = []
    for c in multi[:MAX_CLUSTER_ROWS]:
        names = " ".join(f"L{l}H{h}" for l, h in c.heads[:MAX_HEADS_LISTED])
        more = f" (+{c.size - MAX_HEADS_LISTED})" if c.size > MAX_HEADS_LISTED else ""
        mean = "-" if c.mean_similarity is None else f"{c.mean_similarity:.3f}"
        rows.append((str(c.id), str(c.size), "yes" if c.shared else "no", mean,
                     f"{len(c.layers)}", f"L{min(c.heads)[0]}H{min(c.heads)[1]}", names + more))
    singles = sum(1 for c in clusters if c.size == 1)
    para = (f"Clusters from {a.cluster_source}. {len(multi)} clusters of 2+ heads, {singles} singletons; "
            f"{len(a.clusters.shared_clusters)} clusters take part in sharing. The pivot is the first member "
            f"met in a forward pass (lowest layer, then head).",)
    table = ReportTable(f"clusters of 2+ heads (largest {MAX_CLUSTER_ROWS})",
                        ("id", "heads", "shared", "mean similarity", "layers", "pivot", "members"),
                        tuple(rows), (True, True, False, True, True))
    return ReportSection("Cluster table", "clusters", paragraphs=para, tables=(table,),
                         figures=_example_figures(a))


def _example_figures(a: Analysis) -> tuple[ReportFigure, ...]:
    """A grid of the layer with most shared heads (pivotal patterns outlined), and one pivot."""
    rec = a.records[0]
    fp = rec.meta.model
    shared = summary.shared_head_matrix(a.clusters, fp.num_layers, fp.num_heads)
    layer = int(shared.sum(axis=1).argmax()) if shared.any() else fp.num_layers // 2
    gamma = a.gamma
    overlays = {h: ov for h in range(fp.num_heads)
                if (ov := heatmaps.shared_overlay(rec, a.clusters, layer, h, gamma)) is not None}
    grid = heatmaps.head_grid_figure(rec, layer, overlays=overlays,
                                     overlay_title=f"pivotal pattern each head would share (gamma {gamma:g})")
    figs = [ReportFigure(f"Layer {layer}, all heads", "Block mass on a shared log scale; red outlines: the "
                         "pivotal pattern of each shared head's cluster ('<-LxHy' names the pivot).", _png(grid))]
    if overlays:
        pivot = min(next(iter(a.clusters.shared_clusters)).heads)
        one = heatmaps.heatmap_figure(rec, pivot[0], pivot[1],
                                      overlay=heatmaps.coverage_overlay(rec.block_mass[pivot], gamma))
        figs.append(ReportFigure(f"Pivot L{pivot[0]}H{pivot[1]} of the largest shared cluster",
                                 "Its own coverage mask at gamma outlined.", _png(one)))
    return tuple(figs)


def build_sections(records: list[AttentionRecord], options: ReportOptions, lookup=None) -> list[ReportSection]:
    a = analyse(records, options, lookup)
    sections = [model_section(a, options), similarity_section(a, options), consistency_section(a, options),
                cluster_section(a)]
    return [s for s in sections if s is not None]


def write_model_report(path: Path, records: list[AttentionRecord], options: ReportOptions = ReportOptions(),
                       lookup=None) -> Path:
    """Analyse ``records`` (one model) and write the self-contained HTML page to ``path``."""
    fp = records[0].meta.model
    sections = build_sections(records, options, lookup)
    subtitle = (f"{len(records)} prompt(s), {records[0].meta.num_tokens:,}+ tokens, block size "
                f"{records[0].meta.block_size}; made by sharedattn")
    return write_report(path, f"sharedattn report: {fp.model_id}", subtitle, sections)
