"""A model's shape fingerprint: what records and lookups carry so they are never mixed up."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


class FormatError(ValueError):
    """A file on disk does not follow its documented format; the message names the field."""


@dataclass(frozen=True)
class ModelFingerprint:
    model_id: str  # "smollm2-135m", a folder name, a hub id, or "random:<shape>"
    num_layers: int
    num_heads: int  # query heads per layer
    num_kv_heads: int
    head_dim: int
    max_positions: int  # the model's context length

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object, where: str = "model") -> "ModelFingerprint":
        if not isinstance(data, dict):
            raise FormatError(f"{where}: expected an object")
        values = {}
        for f in fields(cls):
            if f.name not in data:
                raise FormatError(f"{where}.{f.name}: missing")
            value = data[f.name]
            expected = str if f.type == "str" else int
            if not isinstance(value, expected) or isinstance(value, bool):
                raise FormatError(f"{where}.{f.name}: expected {expected.__name__}, got {value!r}")
            values[f.name] = value
        return cls(**values)

    def mismatch(self, other: "ModelFingerprint", *, check_id: bool = True) -> str | None:
        """Name the first field that differs (or None): used to reject a file from another model."""
        for f in fields(self):
            if f.name == "max_positions" or (f.name == "model_id" and not check_id):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                return f"{f.name}: {a!r} != {b!r}"
        return None
