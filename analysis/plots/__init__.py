"""Figures of attention structure and shared patterns (issue 6).

Modules, from the bottom up:

* ``downsample``: display pooling that sums mass (never drops it), sparse ticks, mask outlines;
  pure numpy, no matplotlib.
* ``render``: the one place matplotlib is set up (Agg backend, imported lazily), output formats,
  atomic saving.
* ``heatmaps``: block-mass heatmaps of one head or a layer's grid of heads, with bool mask overlays.
* ``similarity_plots``: head-by-head similarity matrix, clustermap, cross-input scatter.
* ``summary``: the per-model summary figure (density at gamma per layer, shared heads per layer).
* ``report``: HTML primitives of a self-contained page (figures embedded as base64 PNG).
* ``report_content``: the model report's sections: findings, tables and figures from records.

Nothing here is imported by ``sharedattn.analysis`` itself, and matplotlib/seaborn are only
imported inside functions, so importing the package stays cheap.
"""
