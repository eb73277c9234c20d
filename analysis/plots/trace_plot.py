"""The per-head decision map of a sparse prefill: layers x heads, coloured by decision."""
from __future__ import annotations

from pathlib import Path

from ..method.method_config import Decision
from .render import pyplot, save_figure

_COLOURS = {
    Decision.DENSE: "#7f7f7f",
    Decision.PIVOTAL: "#d62728",
    Decision.SHARED: "#ff9896",
    Decision.QUERY_AWARE: "#2ca02c",
    Decision.VERTICAL_SLASH: "#1f77b4",
    Decision.A_SHAPE: "#9467bd",
}


def trace_figure(trace, title: str, path: Path, chunk: int = -1, batch: int = 0) -> Path:
    """Draw ``trace`` (analysis.trace.PrefillTrace) as a layers x heads grid; densities written in
    each cell when the grid is small enough to read them."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    decision = trace.decision[chunk, :, batch].numpy()  # [L, H]
    density = trace.density[chunk, :, batch].numpy()
    layers, heads = decision.shape
    fig, ax = plt.subplots(figsize=(min(3 + heads * 0.55, 18), min(2 + layers * 0.28, 22)))
    cmap = ListedColormap([_COLOURS[d] for d in Decision])
    ax.imshow(decision, cmap=cmap, vmin=-0.5, vmax=len(Decision) - 0.5, aspect="auto",
              interpolation="nearest")
    if layers * heads <= 600:
        for (layer, head), value in ((idx, density[idx]) for idx in
                                     ((a, b) for a in range(layers) for b in range(heads))):
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(0, heads, max(1, heads // 16)))
    ax.set_yticks(range(0, layers, max(1, layers // 20)))
    present = {int(x) for x in decision.ravel()}
    ax.legend(handles=[Patch(color=_COLOURS[d], label=d.label) for d in Decision if int(d) in present],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{title}\noverall density {trace.overall_density():.3f} (numbers: per-head density)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
