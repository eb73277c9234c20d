"""Rich tables that more than one command prints."""
from __future__ import annotations

METRIC_NAMES = {"error_mean": "err", "kl_mean": "KL mean", "kl_median": "KL median"}


def clusters_table(lookup, show: int = 25):
    from rich.table import Table

    shared = lookup.shared_clusters
    t = Table(title=f"{len(lookup.clusters)} clusters, {len(shared)} shared "
                    f"({sum(c.size for c in shared)} heads)")
    for col in ("id", "size", "shared", "mean sim.", "layers", "heads"):
        t.add_column(col)
    for c in lookup.clusters[:show]:
        heads = " ".join(f"L{l}H{h}" for l, h in c.heads[:8]) + (" ..." if c.size > 8 else "")
        layers = f"{c.layers[0]}-{c.layers[-1]} ({len(c.layers)})"
        mean = "-" if c.mean_similarity is None else f"{c.mean_similarity:.3f}"
        t.add_row(str(c.id), str(c.size), "yes" if c.shared else "no", mean, layers, heads)
    if len(lookup.clusters) > show:
        t.caption = f"{len(lookup.clusters) - show} smaller clusters not shown (see the file)"
    return t


def _fmt(value, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if metric == "error_mean" else f"{value:.2e}"


def matched_table(rows, target: str, tokens):
    from rich.table import Table

    scope = f"prompts of {tokens} tokens" if tokens else "all prompts"
    t = Table(title=f"{target} and each other curve read at its density ({scope}; '-': outside that "
                    "curve's measured densities)")
    for col in ("gamma", "density", "curve", *METRIC_NAMES.values()):
        t.add_column(col, justify="left" if col == "curve" else "right")
    for r in rows:
        gamma = "-" if r["gamma"] is None else f"{r['gamma']:g}"
        t.add_row(gamma, f"{r['density']:.3f}", f"[bold]{target}[/]", *(_fmt(r[m], m) for m in METRIC_NAMES))
        for label, values in r["baselines"].items():
            t.add_row("", "", label, *(_fmt(values[m], m) for m in METRIC_NAMES))
        t.add_section()
    return t
