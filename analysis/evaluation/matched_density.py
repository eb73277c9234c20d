"""Methods at matched density, from several `sharedattn compare` runs at different gammas.

One compare run puts each method at one gamma, and methods keep different densities at the same
gamma (shareprefill's pivotal heads run dense), so "lower error at equal or lower density" cannot
be read off one run. Here each method's runs form a curve of (density, error, KL) points, one per
run; a baseline's curve is joined by straight lines and read at the target method's density.
Nothing is extrapolated: a density outside a baseline's measured range gives no value.

Runs must hold the same model and the same prompts (names and token counts); rows can be
restricted to prompts of one length. A method whose parameters other than gamma differ between
runs gives one curve per parameter set, labelled with the parameters that differ.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ...kernels.limits import ConfigError
from ..files.fingerprint import FormatError

METRICS = ("density", "error_mean", "kl_mean", "kl_median")


@dataclass(frozen=True)
class CurvePoint:
    gamma: float | None
    density: float
    error_mean: float | None
    kl_mean: float
    kl_median: float
    prompts: int
    source: str


@dataclass(frozen=True)
class Curve:
    label: str
    method: str
    points: tuple[CurvePoint, ...]  # sorted by density

    def at(self, density: float, metric: str) -> float | None:
        """``metric`` read at ``density`` on the straight lines between points (None outside)."""
        pts = [p for p in self.points if getattr(p, metric) is not None]
        for p in pts:
            if p.density == density:
                return getattr(p, metric)
        for a, b in zip(pts, pts[1:]):
            if a.density < density < b.density:
                t = (density - a.density) / (b.density - a.density)
                return getattr(a, metric) + t * (getattr(b, metric) - getattr(a, metric))
        return None


def _prompt_set(doc: dict, tokens: int | None) -> set[tuple[str, int]]:
    return {(r["prompt"], r["tokens"]) for r in doc["rows"] if tokens is None or r["tokens"] == tokens}


def check_runs(docs: list[tuple[str, dict]], tokens: int | None = None) -> None:
    """Raise ``ConfigError`` naming the first run whose model or prompts differ from the first's
    (``FormatError`` for a file that is not a results.json)."""
    if len(docs) < 1:
        raise ConfigError("no compare results given")
    first_name, first = docs[0]
    for name, doc in docs:
        for key in ("rows", "method_configs", "model"):
            if key not in doc:
                raise FormatError(f"{name} is not a `sharedattn compare` results.json (no {key!r})")
    prompts = _prompt_set(first, tokens)
    if not prompts:
        raise ConfigError(f"{first_name} has no prompt of {tokens} tokens")
    for name, doc in docs[1:]:
        if doc["model"] != first["model"]:
            diff = sorted(k for k in set(doc["model"]) | set(first["model"])
                          if doc["model"].get(k) != first["model"].get(k))
            raise ConfigError(f"{name} is from another model than {first_name} (differs in {', '.join(diff)})")
        other = _prompt_set(doc, tokens)
        if other != prompts:
            missing = sorted(prompts ^ other)[0]
            raise ConfigError(f"{name} and {first_name} ran different prompts "
                             f"(e.g. {missing[0]} at {missing[1]} tokens)")


def _point(rows: list[dict], gamma, source: str) -> CurvePoint:
    errors = [r["error_mean"] for r in rows if r.get("error_mean") is not None]
    kls = [r["kl_mean"] for r in rows]
    return CurvePoint(gamma, statistics.fmean(r["density"] for r in rows),
                      statistics.fmean(errors) if len(errors) == len(rows) else None,
                      statistics.fmean(kls), statistics.median(kls), len(rows), source)


def build_curves(docs: list[tuple[str, dict]], tokens: int | None = None) -> list[Curve]:
    """One curve per (method, parameters other than gamma) over the runs; dense is left out."""
    check_runs(docs, tokens)
    groups: dict[tuple[str, str], tuple[dict, list[CurvePoint]]] = {}  # (method, params) -> params, points
    for name, doc in docs:
        for method, cfg in doc["method_configs"].items():
            if method == "dense":
                continue
            rows = [r for r in doc["rows"] if r["method"] == method and (tokens is None or r["tokens"] == tokens)]
            if not rows:
                continue
            rest = {k: v for k, v in cfg.items() if k != "gamma"}
            _, points = groups.setdefault((method, repr(sorted(rest.items()))), (rest, []))
            if all(p.gamma != cfg.get("gamma") for p in points):  # a repeated run adds no point
                points.append(_point(rows, cfg.get("gamma"), name))
    curves = []
    for (method, _), (own, points) in groups.items():
        siblings = [p for (m, _), (p, _) in groups.items() if m == method]
        keys = sorted(set().union(*siblings))
        differing = [k for k in keys if len({repr(s.get(k)) for s in siblings}) > 1]
        label = method + "".join(f" {k}={own[k]}" if k in own else f" (no {k})" for k in differing)
        curves.append(Curve(label, method, tuple(sorted(points, key=lambda p: p.density))))
    return curves


def matched_rows(curves: list[Curve], target: str) -> list[dict]:
    """For each point of the curve labelled (or of the method named) ``target``: its own metrics and
    every other curve's metrics read at its density."""
    chosen = [c for c in curves if c.label == target] or [c for c in curves if c.method == target]
    if len(chosen) != 1:
        labels = ", ".join(c.label for c in curves)
        raise ConfigError(f"{target!r} names {'no' if not chosen else 'more than one'} curve (curves: {labels})")
    own = chosen[0]
    rows = []
    for p in own.points:
        row = {"gamma": p.gamma, "density": p.density, "error_mean": p.error_mean, "kl_mean": p.kl_mean,
               "kl_median": p.kl_median, "baselines": {}}
        for c in curves:
            if c is not own:
                row["baselines"][c.label] = {m: c.at(p.density, m) for m in METRICS[1:]}
        rows.append(row)
    return rows
