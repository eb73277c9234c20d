"""Attention records: what `capture` writes and every analysis reads.

A record is two files with one stem: ``<stem>.safetensors`` (tensors) and ``<stem>.json``
(sidecar). The format is documented in docs/formats.md; ``load_record`` validates it and names
any bad field.

Tensors (all float32, one prompt, batch 1):

* ``block_mass``  ``[L, H, nqb, nkb]``: A[r, c] = mean over the queries of block r of the
  attention mass on key block c; causal, each row sums to 1.
* ``vertical``    ``[L, H, N]``: mean attention each key receives from the probe (last block).
* ``slash``       ``[L, H, N]``: mean attention along each diagonal offset, from the probe.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_path, write_text_atomic
from .fingerprint import FormatError, ModelFingerprint

SCHEMA_VERSION = 1
RECORD_KIND = "sharedattn.attention-record"
TENSOR_NAMES = ("block_mass", "vertical", "slash")


@dataclass(frozen=True)
class PromptInfo:
    name: str  # bundled prompt name or file path
    sha256: str  # of the token ids as decimal text joined by spaces (exactly what the model saw)
    preview: str  # first characters of the text


@dataclass(frozen=True)
class RecordMeta:
    model: ModelFingerprint
    block_size: int
    num_tokens: int
    prompt: PromptInfo
    packages: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # per layer: the sliding window in tokens of a local layer, None for a global one; None: all global
    layer_windows: tuple[int | None, ...] | None = None

    @property
    def num_blocks(self) -> int:
        return (self.num_tokens + self.block_size - 1) // self.block_size

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Every layer's window (None: global); a record without the field has only global layers."""
        return self.layer_windows or (None,) * self.model.num_layers

    def to_json(self) -> dict:
        return {
            "kind": RECORD_KIND,
            "schema_version": self.schema_version,
            "model": self.model.to_json(),
            "block_size": self.block_size,
            "num_tokens": self.num_tokens,
            "prompt": vars(self.prompt),
            "packages": self.packages,
            "config": self.config,
            **({"layer_windows": list(self.layer_windows)} if self.layer_windows is not None else {}),
        }


@dataclass(frozen=True)
class AttentionRecord:
    meta: RecordMeta
    block_mass: torch.Tensor  # [L, H, nqb, nkb]
    vertical: torch.Tensor  # [L, H, N]
    slash: torch.Tensor  # [L, H, N]

    def __post_init__(self):
        check_tensors(self.meta, {n: getattr(self, n) for n in TENSOR_NAMES})


def expected_shapes(meta: RecordMeta) -> dict[str, tuple[int, ...]]:
    m = meta.model
    nb = meta.num_blocks
    return {
        "block_mass": (m.num_layers, m.num_heads, nb, nb),
        "vertical": (m.num_layers, m.num_heads, meta.num_tokens),
        "slash": (m.num_layers, m.num_heads, meta.num_tokens),
    }


def check_tensors(meta: RecordMeta, tensors: dict[str, torch.Tensor]) -> None:
    for name, shape in expected_shapes(meta).items():
        if name not in tensors:
            raise FormatError(f"tensor {name}: missing")
        if tuple(tensors[name].shape) != shape:
            raise FormatError(f"tensor {name}: shape {tuple(tensors[name].shape)}, expected {shape}")


def record_paths(stem: Path) -> tuple[Path, Path]:
    stem = Path(stem)
    if stem.suffix in (".json", ".safetensors"):
        stem = stem.with_suffix("")
    # Append rather than replace: stems such as "passkey_depth_0.5-150" hold dots.
    return stem.parent / f"{stem.name}.safetensors", stem.parent / f"{stem.name}.json"


def save_record(record: AttentionRecord, stem: Path) -> Path:
    """Write both files atomically; returns the sidecar path."""
    from safetensors.torch import save_file

    tensor_path, json_path = record_paths(stem)
    tensors = {n: getattr(record, n).detach().float().contiguous().cpu() for n in TENSOR_NAMES}
    with atomic_path(tensor_path) as tmp:
        save_file(tensors, str(tmp))
        write_text_atomic(json_path, json.dumps(record.meta.to_json(), indent=2) + "\n")
    return json_path


def _require(data: dict, key: str, kind: type, where: str):
    if key not in data:
        raise FormatError(f"{where}{key}: missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"{where}{key}: expected {kind.__name__}, got {value!r}")
    return value


def parse_layer_windows(value: object, num_layers: int, where: str) -> tuple[int | None, ...] | None:
    """Validate an optional ``layer_windows`` list: one positive int (local) or null (global) per layer."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != num_layers:
        raise FormatError(f"{where}: expected a list of {num_layers} windows (int or null), got {value!r}")
    for i, w in enumerate(value):
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w < 1):
            raise FormatError(f"{where}[{i}]: expected a positive int or null, got {w!r}")
    return tuple(value)


def parse_meta(data: object) -> RecordMeta:
    if not isinstance(data, dict):
        raise FormatError("sidecar: expected a JSON object")
    if data.get("kind") != RECORD_KIND:
        raise FormatError(f"kind: expected {RECORD_KIND!r}, got {data.get('kind')!r}")
    version = _require(data, "schema_version", int, "")
    if version != SCHEMA_VERSION:
        raise FormatError(f"schema_version: {version} is not supported (this build reads {SCHEMA_VERSION})")
    block_size = _require(data, "block_size", int, "")
    num_tokens = _require(data, "num_tokens", int, "")
    if block_size < 1:
        raise FormatError(f"block_size: must be positive, got {block_size}")
    if num_tokens < 1:
        raise FormatError(f"num_tokens: must be positive, got {num_tokens}")
    prompt = _require(data, "prompt", dict, "")
    info = PromptInfo(*(_require(prompt, k, str, "prompt.") for k in ("name", "sha256", "preview")))
    model = ModelFingerprint.from_json(data.get("model"), "model")
    return RecordMeta(
        model=model,
        block_size=block_size,
        num_tokens=num_tokens,
        prompt=info,
        packages=data.get("packages", {}),
        config=data.get("config", {}),
        schema_version=version,
        layer_windows=parse_layer_windows(data.get("layer_windows"), model.num_layers, "layer_windows"),
    )


def load_record(path: Path) -> AttentionRecord:
    """Load and validate a record from either of its two paths (or the common stem)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensor_path, json_path = record_paths(path)
    for p in (json_path, tensor_path):
        if not p.is_file():
            raise FormatError(f"{p}: no such record file")
    try:
        meta = parse_meta(json.loads(json_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{json_path}: not valid JSON ({exc})") from None
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as exc:
        raise FormatError(f"{tensor_path}: not a safetensors file ({exc})") from None
    check_tensors(meta, tensors)
    return AttentionRecord(meta, **{n: tensors[n] for n in TENSOR_NAMES})


def check_compatible(records: list[AttentionRecord]) -> None:
    """Reject records of different models or block sizes mixed in one analysis."""
    first = records[0].meta
    for rec in records[1:]:
        diff = first.model.mismatch(rec.meta.model)
        if diff:
            raise FormatError(f"records come from different models ({diff})")
        if rec.meta.block_size != first.block_size:
            raise FormatError(
                f"records use different block sizes ({first.block_size} != {rec.meta.block_size})"
            )
        if rec.meta.windows != first.windows:
            raise FormatError(f"records use different local layers (layer_windows {list(first.windows)} "
                              f"!= {list(rec.meta.windows)})")
