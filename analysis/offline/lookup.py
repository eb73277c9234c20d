"""The lookup: SharePrefill's offline table of head clusters, as a versioned JSON file.

Format (documented in docs/formats.md, section "Lookup")::

    {"kind": "sharedattn.lookup", "schema_version": 1,
     "model": {model fingerprint},
     "calibration": {"prompts": [{"name", "sha256", "num_tokens"}], "block_size", "gamma",
                     "metric", "options": {...}, "packages": {...}},
     "clusters": [{"id", "heads": [[layer, head], ...], "shared", "size",
                   "mean_similarity" (null for a singleton), "layers": [...]}]}

``load_lookup`` validates every field and names the bad one; ``check_lookup_model`` rejects a
lookup made for another model. A head that appears in no cluster is unclustered (never shared).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..files.atomic import write_text_atomic
from ..files.fingerprint import FormatError, ModelFingerprint
from ..files.records import AttentionRecord, parse_layer_windows
from .cluster_config import ClusterConfig
from .clustering import Clustering, HeadCluster, cluster_heads
from .similarity import SimilarityConfig, head_kinds, mean_similarity, similarity_matrices

SCHEMA_VERSION = 1
LOOKUP_KIND = "sharedattn.lookup"


@dataclass(frozen=True)
class CalibrationPrompt:
    name: str
    sha256: str
    num_tokens: int


@dataclass(frozen=True)
class Calibration:
    prompts: tuple[CalibrationPrompt, ...]
    block_size: int
    gamma: float
    metric: str
    options: dict = field(default_factory=dict)  # clustering (and autoencoder) options used
    packages: dict = field(default_factory=dict)
    layer_windows: tuple[int | None, ...] | None = None  # the records' local layers; None: all global

    def windows(self, num_layers: int) -> tuple[int | None, ...]:
        return self.layer_windows or (None,) * num_layers

    def to_json(self) -> dict:
        return {"prompts": [vars(p).copy() for p in self.prompts], "block_size": self.block_size,
                "gamma": self.gamma, "metric": self.metric, "options": self.options,
                "packages": self.packages,
                **({"layer_windows": list(self.layer_windows)} if self.layer_windows is not None else {})}


@dataclass(frozen=True)
class Lookup:
    model: ModelFingerprint
    calibration: Calibration
    clusters: tuple[HeadCluster, ...]
    schema_version: int = SCHEMA_VERSION

    def head_cluster(self) -> dict[tuple[int, int], HeadCluster]:
        """(layer, head) -> its cluster; heads missing from the lookup are simply absent."""
        return {head: c for c in self.clusters for head in c.heads}

    def cluster_of(self, layer: int, head: int) -> HeadCluster | None:
        return self.head_cluster().get((layer, head))

    @property
    def shared_clusters(self) -> tuple[HeadCluster, ...]:
        return tuple(c for c in self.clusters if c.shared)

    def to_json(self) -> dict:
        return {
            "kind": LOOKUP_KIND, "schema_version": self.schema_version,
            "model": self.model.to_json(), "calibration": self.calibration.to_json(),
            "clusters": [cluster_json(c) for c in self.clusters],
        }


def cluster_json(c: HeadCluster) -> dict:
    return {"id": c.id, "heads": [list(h) for h in c.heads], "shared": c.shared, "size": c.size,
            "mean_similarity": c.mean_similarity, "layers": list(c.layers)}


def calibration_from_records(records: list[AttentionRecord], gamma: float, metric: str,
                             options: dict) -> Calibration:
    prompts = tuple(CalibrationPrompt(r.meta.prompt.name, r.meta.prompt.sha256, r.meta.num_tokens)
                    for r in records)
    meta = records[0].meta
    return Calibration(prompts, meta.block_size, gamma, metric, dict(options), dict(meta.packages),
                       meta.layer_windows)


def build_lookup(records: list[AttentionRecord], clustering: Clustering, *, gamma: float,
                 metric: str, options: dict) -> Lookup:
    return Lookup(records[0].meta.model, calibration_from_records(records, gamma, metric, options),
                  clustering.clusters)


def lookup_from_records(records: list[AttentionRecord], sim_config: SimilarityConfig,
                        cluster_config: ClusterConfig, *, codes=None, autoencoder=None) -> Lookup:
    """The offline pipeline, similarity -> clustering -> lookup, over the calibration records.

    ``codes`` are the heads' latent codes (``autoencoder.latent_codes``) when the clustering runs on
    autoencoder features; ``autoencoder`` is their ``AutoencoderConfig``, recorded in the options."""
    sim = mean_similarity(similarity_matrices(records, sim_config))
    meta = records[0].meta
    kinds = head_kinds(meta.windows, meta.model.num_heads).tolist()
    clustering = cluster_heads(sim, meta.model.num_heads, cluster_config, codes=codes, kinds=kinds)
    options = {**sim_config.to_json(), **cluster_config.to_json()}
    if autoencoder is not None:
        options["autoencoder"] = autoencoder.to_json()
    return build_lookup(records, clustering, gamma=sim_config.gamma, metric=sim_config.metric.value,
                        options=options)


def save_lookup(lookup: Lookup, path: Path) -> Path:
    """Write the lookup atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(lookup.to_json(), indent=2) + "\n")
    return path


# ---- validation -------------------------------------------------------------------------


def _get(data: dict, key: str, kind: type | tuple, where: str):
    if key not in data:
        raise FormatError(f"{where}{key}: missing")
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise FormatError(f"{where}{key}: expected {kinds[0].__name__}, got {value!r}")
    if not isinstance(value, kinds):
        raise FormatError(f"{where}{key}: expected {kinds[0].__name__}, got {value!r}")
    return value


def parse_calibration(data: object, num_layers: int) -> Calibration:
    if not isinstance(data, dict):
        raise FormatError("calibration: expected an object")
    w = "calibration."
    prompts = []
    for i, p in enumerate(_get(data, "prompts", list, w)):
        if not isinstance(p, dict):
            raise FormatError(f"{w}prompts[{i}]: expected an object")
        pw = f"{w}prompts[{i}]."
        prompts.append(CalibrationPrompt(_get(p, "name", str, pw), _get(p, "sha256", str, pw),
                                         _get(p, "num_tokens", int, pw)))
    block_size = _get(data, "block_size", int, w)
    if block_size < 1:
        raise FormatError(f"{w}block_size: must be positive, got {block_size}")
    gamma = float(_get(data, "gamma", (float, int), w))
    if not (0.0 < gamma <= 1.0):
        raise FormatError(f"{w}gamma: must be in (0, 1], got {gamma}")
    windows = parse_layer_windows(data.get("layer_windows"), num_layers, f"{w}layer_windows")
    return Calibration(tuple(prompts), block_size, gamma, _get(data, "metric", str, w),
                       _get(data, "options", dict, w), data.get("packages", {}), windows)


def _parse_head(value: object, where: str, model: ModelFingerprint) -> tuple[int, int]:
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise FormatError(f"{where}: expected [layer, head], got {value!r}")
    layer, head = value
    if not (0 <= layer < model.num_layers and 0 <= head < model.num_heads):
        raise FormatError(f"{where}: head {value} is outside the model "
                          f"({model.num_layers} layers x {model.num_heads} heads)")
    return layer, head


def parse_cluster(data: object, index: int, model: ModelFingerprint) -> HeadCluster:
    w = f"clusters[{index}]."
    if not isinstance(data, dict):
        raise FormatError(f"clusters[{index}]: expected an object")
    heads = tuple(_parse_head(h, f"{w}heads[{j}]", model)
                  for j, h in enumerate(_get(data, "heads", list, w)))
    if not heads:
        raise FormatError(f"{w}heads: empty cluster")
    size = _get(data, "size", int, w)
    if size != len(heads):
        raise FormatError(f"{w}size: {size} != {len(heads)} heads listed")
    mean = data.get("mean_similarity")
    if mean is not None and (isinstance(mean, bool) or not isinstance(mean, (int, float))
                             or not (0.0 <= mean <= 1.0)):
        raise FormatError(f"{w}mean_similarity: expected a number in [0, 1] or null, got {mean!r}")
    cluster = HeadCluster(_get(data, "id", int, w), heads, _get(data, "shared", bool, w),
                          None if mean is None else float(mean))
    layers = _get(data, "layers", list, w)
    if layers != list(cluster.layers):
        raise FormatError(f"{w}layers: {layers} does not match the heads' layers {list(cluster.layers)}")
    if cluster.shared and size < 2:
        raise FormatError(f"{w}shared: a cluster of one head cannot be shared")
    return cluster


def parse_clusters(data: object, model: ModelFingerprint) -> tuple[HeadCluster, ...]:
    if not isinstance(data, list):
        raise FormatError("clusters: expected a list")
    clusters = tuple(parse_cluster(c, i, model) for i, c in enumerate(data))
    seen_ids, seen_heads = set(), {}
    for i, c in enumerate(clusters):
        if c.id in seen_ids:
            raise FormatError(f"clusters[{i}].id: duplicate id {c.id}")
        seen_ids.add(c.id)
        for h in c.heads:
            if h in seen_heads:
                raise FormatError(f"clusters[{i}].heads: head {list(h)} is also in cluster {seen_heads[h]}")
            seen_heads[h] = c.id
    return clusters


def parse_lookup(data: object) -> Lookup:
    if not isinstance(data, dict):
        raise FormatError("lookup: expected a JSON object")
    if data.get("kind") != LOOKUP_KIND:
        raise FormatError(f"kind: expected {LOOKUP_KIND!r}, got {data.get('kind')!r}")
    version = _get(data, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise FormatError(f"schema_version: {version} is not supported (this build reads {SCHEMA_VERSION})")
    model = ModelFingerprint.from_json(data.get("model"), "model")
    return Lookup(model, parse_calibration(data.get("calibration"), model.num_layers),
                  parse_clusters(data.get("clusters"), model), version)


def load_lookup(path: Path) -> Lookup:
    """Read and validate a lookup file; a ``FormatError`` names the first bad field."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such lookup file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    return parse_lookup(data)


def check_lookup_model(lookup: Lookup, model: ModelFingerprint, *, check_id: bool = True) -> None:
    """Raise ``FormatError`` naming the first fingerprint field where the lookup's model differs."""
    diff = lookup.model.mismatch(model, check_id=check_id)
    if diff:
        raise FormatError(f"lookup was made for another model (model.{diff})")


def check_lookup_windows(lookup: Lookup, windows: tuple[int | None, ...] | None) -> None:
    """Raise ``FormatError`` naming ``calibration.layer_windows`` when the model's local layers
    (``windows``: one window or None per layer; None: all global) differ from the lookup's."""
    num = lookup.model.num_layers
    ours, theirs = lookup.calibration.windows(num), tuple(windows or (None,) * num)
    if ours != theirs:
        raise FormatError(f"lookup was made for another model (calibration.layer_windows: lookup "
                          f"{_windows_text(ours)}, model {_windows_text(theirs)})")


def _windows_text(windows: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("global" if w is None else str(w) for w in windows) + "]"
