"""Matplotlib set-up, output formats and atomic saving: the only place pyplot is obtained.

matplotlib is imported lazily, inside ``pyplot()``, with the non-interactive Agg backend, so
``import sharedattn.analysis`` (and this module) never loads it.
"""
from __future__ import annotations

import io
import os
from enum import Enum
from pathlib import Path

from ..files.atomic import write_with

DPI = 130  # legible at the sizes below without multi-megabyte PNGs
HEATMAP_CMAP = "viridis"
SIMILARITY_CMAP = "magma"
LAYER_CMAP = "turbo"
OUTLINE_COLOR = "#ff2d2d"
NONCAUSAL_COLOR = "#f2f2f2"  # cells above the causal diagonal (zero mass by construction)


class PlotError(ValueError):
    """A figure cannot be made from the inputs given; the message is one line naming the problem."""


class OutputFormat(str, Enum):
    PNG = "png"
    SVG = "svg"
    PDF = "pdf"


def output_format(path: Path) -> OutputFormat:
    """The format named by ``path``'s suffix; ``PlotError`` listing the choices otherwise."""
    suffix = Path(path).suffix.lower().lstrip(".")
    try:
        return OutputFormat(suffix)
    except ValueError:
        choices = ", ".join(f".{f.value}" for f in OutputFormat)
        shown = f"'.{suffix}'" if suffix else "no suffix"
        raise PlotError(f"cannot write {str(path)!r}: {shown} is not a figure format ({choices})") from None


def check_output_path(path: Path) -> OutputFormat:
    """Check, before any work is done, that a figure can be written to ``path``."""
    fmt = output_format(path)
    parent = Path(path).parent
    if not parent.is_dir():
        raise PlotError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise PlotError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")
    if Path(path).is_dir():
        raise PlotError(f"cannot write {str(path)!r}: it is a folder")
    return fmt


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported here, on first use)."""
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def close(fig) -> None:
    pyplot().close(fig)


def save_figure(fig, path: Path, *, close_after: bool = True) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix); nothing is left on failure."""
    fmt = check_output_path(path)
    meta = {"Software": None} if fmt is OutputFormat.PNG else None

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format=fmt.value, dpi=DPI, metadata=meta, bbox_inches="tight", pad_inches=0.08)

    try:
        write_with(Path(path), write)
    finally:
        if close_after:
            close(fig)
    return Path(path)


def png_bytes(fig, *, dpi: int = DPI, close_after: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes (for embedding in an HTML report)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    finally:
        if close_after:
            close(fig)
    return buf.getvalue()


def shorten(text: str, limit: int = 48) -> str:
    """One line, at most ``limit`` characters, for titles."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def prompt_label(meta) -> str:
    """``prompt NAME, N tokens, block B`` for a record's ``RecordMeta``."""
    name = shorten(Path(meta.prompt.name).name if "/" in meta.prompt.name else meta.prompt.name, 40)
    return f"prompt {name}, {meta.num_tokens:,} tokens, block {meta.block_size}"
