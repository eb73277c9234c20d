"""The figures of `sharedattn heatmap`, built from attention records: one function per view.

``make_figure`` picks the view: a layer's heatmaps (with a mask outlined: coverage, the shared
cluster's pivotal pattern, or a method's mask computed by the caller), the head-by-head similarity
matrix or clustermap, pair similarities across two prompts, or the per-model summary. Clusters come
from a lookup file (checked against the records' model) or from clustering the records' heads with
the defaults of `sharedattn cluster`. ``default_name`` names the figure file of a view.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

from ..offline.choices import JsCombine, Metric
from .choices import MaskKind, View

Note = Callable[[str], None]  # hears remarks about the figure (nothing outlined, ...)


def _silent(_msg: str) -> None:
    pass


def _similarity_config(metric: Metric, gamma: float):
    from ..offline.similarity import SimilarityConfig

    return SimilarityConfig(metric=metric, gamma=gamma, js_combine=JsCombine.WORST)


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


def load_clusters(lookup_path: Optional[Path], records, gamma: float, metric: Metric):
    """A lookup (checked against the records' model) or a fresh clustering of the records' heads."""
    fp = records[0].meta.model
    if lookup_path is not None:
        from ..offline.lookup import check_lookup_model, load_lookup

        lookup = load_lookup(lookup_path)
        check_lookup_model(lookup, fp, check_id=False)
        return lookup
    from ..offline.clustering import ClusterConfig, cluster_heads
    from ..offline.similarity import mean_similarity, similarity_matrices

    config = _similarity_config(metric, gamma)
    return cluster_heads(mean_similarity(similarity_matrices(records, config)), fp.num_heads, ClusterConfig())


def heatmap_view(rec, layer: int, head: Optional[int], mask: Optional[MaskKind], gamma: float, clusters,
                 method_masks=None, note: Optional[Note] = None):
    from . import heatmaps

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
        (note or _silent)(f"{which} in a shared cluster: nothing outlined")
    if head is not None:
        return heatmaps.heatmap_figure(rec, layer, head, overlay=overlays.get(head))
    title = {MaskKind.COVERAGE: f"coverage mask at gamma {gamma:g}",
             MaskKind.SHARED: f"pivotal pattern each head would share (gamma {gamma:g})"}.get(
        mask, f"blocks {mask.value} kept on this prompt" if mask else "")
    return heatmaps.head_grid_figure(rec, layer, overlays=overlays, overlay_title=title)


def similarity_view(records, view: View, metric: Metric, gamma: float):
    from ..offline.similarity import mean_similarity, similarity_matrices
    from . import similarity_plots as sp

    fp = records[0].meta.model
    matrices = similarity_matrices(records, _similarity_config(metric, gamma))
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

    from . import summary

    fp = records[0].meta.model
    dens = np.mean([summary.head_densities(r, gamma) for r in records], axis=0)
    shared = summary.shared_head_matrix(clusters, fp.num_layers, fp.num_heads)
    title = (f"{fp.model_id}: density at gamma {gamma:g} per layer; "
             f"{len(records)} prompt(s), {records[0].meta.num_tokens:,} tokens")
    return summary.summary_figure(dens, title=title, gamma=gamma, shared=shared, shared_source=source)


def make_figure(records, view: View, *, layer: Optional[int], head: Optional[int], mask: Optional[MaskKind],
                gamma: float, metric: Metric, lookup: Optional[Path], method_masks=None,
                note: Optional[Note] = None):
    """The figure of ``view`` (see the module docstring); ``method_masks``: ``[H, nqb, nkb]`` bool of
    ``layer`` when ``mask`` is a method's."""
    rec = records[0]
    if view in (View.SIMILARITY, View.CLUSTERMAP, View.ACROSS):
        return similarity_view(records, view, metric, gamma)
    needs_clusters = view is View.SUMMARY or mask is MaskKind.SHARED
    clusters = load_clusters(lookup, records, gamma, metric) if needs_clusters else None
    source = "from the lookup" if lookup else "clusters of these records' heads"
    if view is View.SUMMARY:
        return summary_view(records, gamma, clusters, source)
    return heatmap_view(rec, layer, head, mask, gamma, clusters, method_masks, note)
