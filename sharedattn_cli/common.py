"""What every command shares: option aliases, consoles, error mapping, model/prompt resolution.

Heavy modules (torch, transformers) are imported inside functions so `sharedattn --help` is fast.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console

from sharedattn.analysis.method import method_config as _mc
from sharedattn.kernels.limits import ConfigError, one_of

console = Console(highlight=False)  # results (stdout)
err_console = Console(stderr=True, highlight=False)  # progress, notes and errors (stderr)

DEFAULT_OUT = Path("sharedattn-out")
DEFAULT_TOKENS = 2048


class UserError(Exception):
    """A known problem with the user's input: printed as one line, exit code 2."""


class _Flags:
    debug = False


def set_debug(value: bool) -> None:
    _Flags.debug = value


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [UserError, ConfigError]
    for module, name in (("sharedattn.analysis.files.prompts", "PromptError"),
                         ("sharedattn.analysis.files.fingerprint", "FormatError"),
                         ("sharedattn.analysis.hf.models", "ModelLoadError"),
                         ("sharedattn.analysis.hf.prefill_run", "AttentionInterfaceError"),
                         ("sharedattn.analysis.plots.render", "PlotError")):
        mod = sys.modules.get(module)
        if mod is not None:
            errors.append(getattr(mod, name))
    return tuple(errors)


def _is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def cli_command(fn: Callable) -> Callable:
    """Map known errors (``UserError``, the library's ``ConfigError``, format, prompt and model
    errors, out of memory) to one clear line and exit code 2 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - filtered below
            if _Flags.debug:
                raise
            if isinstance(exc, _known_errors()):
                fail(str(exc))
            if _is_out_of_memory(exc):
                fail(f"out of GPU memory ({str(exc).splitlines()[0][:160]}); "
                     "try a shorter prompt (--tokens), --chunk-size, or --device cpu")
            raise

    return wrapper


# ---- shared option aliases -------------------------------------------------------------------

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model: 'smollm2-135m' (bundled, default), a local Hugging Face folder, or a hub id.")]
RandomInitOpt = Annotated[Optional[str], typer.Option(
    "--random-init", help="Randomly initialised model of a named shape (llama-tiny, smollm2-shape, "
    "llama-3.1-8b-shape[:LAYERS]); its attention is not realistic.")]
TokensOpt = Annotated[int, typer.Option(
    "--tokens", "-n", help="Length of bundled prompts, in tokens.")]
TruncateOpt = Annotated[bool, typer.Option(
    "--truncate", help="Cut prompt files longer than the model's context instead of failing.")]
BLOCK_SIZE_HELP = (f"Block size in tokens, {one_of(_mc.BLOCK_SIZES)} (default {_mc.DEFAULT_BLOCK_SIZE}; "
                   f"{_mc.SHORT_CONTEXT_BLOCK_SIZE} for models with a context of at most "
                   f"{_mc.SHORT_CONTEXT // 1024}K).")
BlockSizeOpt = Annotated[Optional[int], typer.Option("--block-size", "-b", help=BLOCK_SIZE_HELP)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, float16, bfloat16.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda if present).")]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
InputsArg = Annotated[Optional[list[str]], typer.Argument(
    help="[MODEL] PROMPT...: an optional model, then prompt files or bundled prompt names "
         "(see `sharedattn prompts list`). Default: the bundled model and prompt.", show_default=False)]


@dataclass(frozen=True)
class ModelChoice:
    model: Optional[str]
    random_init: Optional[str]
    dtype: str = "auto"
    device: Optional[str] = None

    def load(self):
        from sharedattn.analysis.hf.models import load_model

        quiet_transformers()
        with err_console.status(f"loading model {self.random_init or self.model or 'smollm2-135m'}..."):
            loaded = load_model(self.model, random_init=self.random_init, dtype=self.dtype, device=self.device)
        if not loaded.realistic:
            err_console.print(f"[yellow]note:[/] {loaded.source}: random weights, so its attention "
                              "patterns are not realistic (fine for speed runs and tests)")
        return loaded


def split_inputs(inputs: Optional[list[str]], model_opt: Optional[str]) -> tuple[Optional[str], list[str]]:
    """Split positional ``[MODEL] PROMPT...`` into (model, prompts)."""
    from sharedattn.analysis.hf.models import looks_like_model
    from sharedattn.analysis.files.prompts import is_prompt_name

    items = list(inputs or [])
    model = model_opt
    if items and looks_like_model(items[0]) and not is_prompt_name(items[0]):
        if model_opt is not None:
            raise UserError(f"two models given: --model {model_opt!r} and {items[0]!r}")
        model = items.pop(0)
    return model, items


def quiet_transformers() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_prompts(loaded, specs: list[str], tokens: int, truncate: bool) -> list:
    from sharedattn.analysis.files.prompts import resolve_prompt

    max_tokens = loaded.fingerprint.max_positions or sys.maxsize
    return [resolve_prompt(s, loaded.tokenizer, tokens=tokens, max_tokens=max_tokens, truncate=truncate)
            for s in (specs or [None])]


def check_out_dir(path: Path) -> Path:
    """Fail early, with one line, if ``path`` cannot become a writable folder; create nothing."""
    import os

    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"output folder {str(path)!r} cannot be created: {str(probe)!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output folder {str(path)!r} is not writable")
    return path
