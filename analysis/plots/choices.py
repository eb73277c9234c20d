"""Closed choices of the figures, in a module that imports neither torch nor matplotlib.

The CLI uses these Enums for its options so `sharedattn --help` stays fast; ``heatmaps``
re-exports ``MaskKind``.
"""
from __future__ import annotations

from enum import Enum


class MaskKind(str, Enum):
    COVERAGE = "coverage"  # the head's own coverage mask at gamma
    SHARED = "shared"  # the pivotal pattern of the head's shared cluster
    # the mask a sparse prefill method chose for the head on this prompt (runs the model)
    A_SHAPE = "a-shape"
    VERTICAL_SLASH = "vertical-slash"
    FLEXPREFILL = "flexprefill"
    SHAREPREFILL = "shareprefill"

    @property
    def is_method(self) -> bool:
        return self not in (MaskKind.COVERAGE, MaskKind.SHARED)


class View(str, Enum):
    HEATMAP = "heatmap"  # block-mass map of one head, or the grid of a layer's heads
    SIMILARITY = "similarity"  # head-by-head similarity matrix ordered by layer
    CLUSTERMAP = "clustermap"  # seaborn clustermap with dendrogram and layer strip
    ACROSS = "across"  # pair similarities under prompt A against prompt B
    SUMMARY = "summary"  # per-layer density at gamma and shared heads
