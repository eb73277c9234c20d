"""What the kernels can run, stated once: block sizes and head dims, and the error for asking more.

Everything above the kernels reads these names instead of restating them: the method and capture
configs validate against ``BLOCK_SIZES`` before any launch (so a bad value fails the same way on
CPU, where the torch twin would run it, and on CUDA, where Triton cannot), and the CLI's help
prints them. ``ConfigError`` is the library's one error for invalid configuration; it subclasses
``ValueError`` so callers that catch ``ValueError`` keep working, and the CLI maps it to one line
and exit code 2. This module imports nothing but ``enum``, so reading it costs no torch import.
"""
from __future__ import annotations

from enum import Enum

# Layout block sizes the Triton kernels compile for (a block is BLOCK_SIZE // BLOCK_N key tiles,
# and the tiles are at most 128 wide); the torch twins accept any size, the configs do not.
BLOCK_SIZES = (16, 32, 64, 128)
HEAD_DIMS = (16, 32, 64, 128)  # tl.dot over the head dim: a power of two from 16 to 128
DEFAULT_BLOCK_SIZE = 128  # the block the launch shapes are tuned for (attn_fwd.default_config)
DEFAULT_CHUNK_SIZE = 1024  # query rows block_mass reduces at once on the torch twin (bounds its memory)
DTYPES = ("float32", "float16", "bfloat16")  # the element types the kernels and the models run in
LOG2E = 1.4426950408889634  # log2(e): the kernels' softmax runs in base 2 (scale * LOG2E, exp2)
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class KernelChoice(str, Enum):
    """Which attention kernel a prefill runs (``--kernel``; ``kernels/backend.py`` decides per call)."""

    AUTO = "auto"  # flash-attn-4 where it measured faster and is installed, else Triton (the torch twin on CPU)
    TRITON = "triton"  # our block-sparse Triton kernel
    FLASH = "flash"  # flash-attn-4 through FlexAttention (pip install 'sharedattn[flash]'; Hopper GPUs)


class ConfigError(ValueError):
    """An invalid configuration value (a config field, an option): one line for the user."""


def one_of(values: tuple[int, ...]) -> str:
    """``(16, 32, 64)`` -> ``"16, 32 or 64"``."""
    text = [str(v) for v in values]
    return ", ".join(text[:-1]) + f" or {text[-1]}" if len(text) > 1 else text[0]


def check_block_size(block_size: int, name: str = "block_size") -> None:
    """Raise ``ConfigError`` unless the kernels can run ``block_size``."""
    if block_size not in BLOCK_SIZES:
        raise ConfigError(f"{name} must be one of {one_of(BLOCK_SIZES)}, got {block_size}")
