"""What every command shares: consoles, error mapping, model/prompt resolution (option aliases: options.py).

Heavy modules (torch, transformers) are imported inside functions so `sharedattn --help` is fast.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from sharedattn.kernels.limits import ConfigError

console = Console(highlight=False)  # results (stdout)
err_console = Console(stderr=True, highlight=False)  # progress, notes and errors (stderr)

DEFAULT_OUT = Path("sharedattn-out")
DEFAULT_TOKENS = 2048


class UserError(Exception):
    """A known problem with the user's input: printed as one line, exit code 2."""


class _Flags:
    debug = False
    world = None  # the torchrun world of the running command (cli_command)


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


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    # escaped: messages quote user values and lists ("[128, global]") that rich would read as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def known_message(exc: BaseException) -> Optional[str]:
    """The one line a known error prints (``UserError``, the library's ``ConfigError``, format,
    prompt and model errors, out of memory); None for anything else (a bug: a traceback)."""
    if isinstance(exc, _known_errors()):
        return str(exc)
    if _is_out_of_memory(exc):
        return (f"out of GPU memory ({str(exc).splitlines()[0][:160]}); "
                "try a shorter prompt (--tokens), --chunk-size, or --device cpu")
    return None


def cli_command(fn: Callable) -> Callable:
    """Map known errors (``known_message``) to one clear line and exit code 2 (a traceback only with
    --debug). Under torchrun (several ranks), commands marked by ``ranks.over_ranks`` split their
    prompts over the ranks; the others refuse, and a failed rank is one line naming it
    (``RankFailure``: exit 2, or 1 for an unexpected error)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sharedattn.analysis.files.distributed import RankFailure

        try:
            return _in_world(fn, args, kwargs)
        except typer.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - filtered below
            if _Flags.debug:
                raise
            if isinstance(exc, RankFailure):
                fail(str(exc), 2 if exc.known else 1)
            message = known_message(exc)
            if message is not None:
                fail(message)
            raise

    return wrapper


def _in_world(fn: Callable, args, kwargs):
    from sharedattn.analysis.files.distributed import World

    world = World.from_env()
    _Flags.world = world
    if not world.parallel:
        return fn(*args, **kwargs)
    if not world.is_main:  # rank 0 prints for everyone: progress, notes, tables, the error line
        console.quiet = err_console.quiet = True
    run = getattr(fn, "over_ranks", None)
    if run is None:
        raise UserError(f"this command runs in one process; under torchrun ({world.size} ranks) only "
                        "capture, compare and cluster split their prompts over the ranks")
    return run(world, args, kwargs)


def current_world():
    """The torchrun world of the running command (``analysis.files.distributed.World``; one
    process outside torchrun): library calls take it to split their prompts."""
    from sharedattn.analysis.files.distributed import World

    return getattr(_Flags, "world", None) or World()


@dataclass(frozen=True)
class ModelChoice:
    model: Optional[str]
    random_init: Optional[str]
    dtype: str = "auto"
    device: Optional[str] = None
    device_map: Optional[str] = None  # --device-map: shard over the GPUs (analysis.files.distributed.DeviceMap)
    max_memory: Optional[str] = None  # --max-memory, as typed: 0=60GiB,1=60GiB,cpu=100GiB

    def load(self):
        from sharedattn.analysis.hf.models import load_model

        quiet_transformers()
        with err_console.status(f"loading model {self.random_init or self.model or 'smollm2-135m'}..."):
            loaded = load_model(self.model, random_init=self.random_init, dtype=self.dtype, device=self.device,
                                device_map=self.device_map, max_memory=parse_max_memory(self.max_memory))
        placement = getattr(loaded.model, "hf_device_map", None)
        if self.device_map and placement:
            counts: dict = {}
            for where in placement.values():
                counts[str(where)] = counts.get(str(where), 0) + 1
            err_console.print(f"[dim]device map {getattr(self.device_map, 'value', self.device_map)}: "
                              + ", ".join(f"{n} module(s) on {d}" for d, n in counts.items()) + "[/]")
        if not loaded.realistic:
            err_console.print(f"[yellow]note:[/] {loaded.source}: random weights, so its attention "
                              "patterns are not realistic (fine for speed runs and tests)")
        return loaded


def parse_max_memory(text: Optional[str]) -> Optional[dict]:
    """``0=60GiB,1=60GiB,cpu=100GiB`` -> ``{0: "60GiB", 1: "60GiB", "cpu": "100GiB"}`` (accelerate's
    ``max_memory``); one line naming the bad entry otherwise."""
    import re

    if text is None:
        return None
    out: dict = {}
    for entry in (e.strip() for e in text.split(",")):
        key, sep, size = (part.strip() for part in entry.partition("="))
        if not sep or not re.fullmatch(r"\d+|cpu", key) or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B)?", size, re.I):
            raise UserError(f"--max-memory {text!r}: expected DEVICE=SIZE entries (DEVICE a GPU number or cpu, "
                            f"SIZE like 60GiB), got {entry!r}")
        out[int(key) if key.isdigit() else key] = int(size) if size.isdigit() else size
    return out


def split_inputs(inputs: Optional[list[str]], model_opt: Optional[str]) -> tuple[Optional[str], list[str]]:
    """Split positional ``[MODEL] PROMPT...`` into (model, prompts)."""
    from sharedattn.analysis.files.prompts import is_prompt_name
    from sharedattn.analysis.hf.models import looks_like_model

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
    """Prompt files, bundled prompts and the generated prompts of compare's grid by name
    (``multikey:needles=4,seed=11``, ``ruler-mq:seed=2``), sized to ``tokens``."""
    from sharedattn.analysis.evaluation.prompt_suite import named_task, parse_task_name
    from sharedattn.analysis.files.prompts import PromptError, resolve_prompt

    max_tokens = loaded.fingerprint.max_positions or sys.maxsize
    out = []
    for spec in specs or [None]:
        if spec and parse_task_name(spec) is not None:
            if tokens > max_tokens:
                raise PromptError(f"--tokens {tokens} is longer than the model's context of {max_tokens} tokens")
            out.append(named_task(spec, loaded.tokenizer, tokens).prompt)
        else:
            out.append(resolve_prompt(spec, loaded.tokenizer, tokens=tokens, max_tokens=max_tokens,
                                      truncate=truncate))
    return out


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


def similarity_config(metric, gamma: float, js_combine):
    from sharedattn.analysis.offline.similarity import SimilarityConfig

    return SimilarityConfig(metric=metric, gamma=gamma, js_combine=js_combine)


def check_kernel(kernel, device: Optional[str]) -> None:
    """``--kernel flash`` where flash-attn-4 cannot run: one line and exit 2 (``ConfigError``),
    before any model is loaded. ``device``: the ``--device`` option (default: cuda if present)."""
    if getattr(kernel, "value", kernel) != "flash":
        return
    import torch

    from sharedattn.kernels.backend import require_flash

    require_flash(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def kernels_to_time(kernel) -> tuple[list[str], Optional[str]]:
    """``bench kernel`` / ``bench prefill``: the attention backends ``--kernel`` asks to time, and a
    note when flash is left out. auto: triton, flash and auto side by side (triton alone where
    flash-attn-4 cannot run, auto being triton there); triton or flash: that one (flash without
    flash-attn-4: ``ConfigError``, one line, exit 2)."""
    from sharedattn.kernels.backend import flash_unavailable, require_flash

    name = getattr(kernel, "value", kernel)
    if name == "triton":
        return ["triton"], None
    if name == "flash":
        require_flash()
        return ["flash"], None
    why = flash_unavailable()
    if why:
        return ["triton"], f"flash and auto not timed: {why} (auto runs triton here)"
    return ["triton", "flash", "auto"], None


def gpu_or_cpu_note(loaded) -> bool:
    """True when the model is on a GPU; on the CPU, notes that times there say nothing about GPU speed."""
    on_gpu = next(loaded.model.parameters()).device.type == "cuda"
    if not on_gpu:
        err_console.print("[yellow]note:[/] on the CPU the kernels run as their torch reference twins "
                          "(exact, slow): times here say nothing about GPU speed")
    return on_gpu
