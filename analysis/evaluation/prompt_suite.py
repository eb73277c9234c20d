"""The prompt suite of a comparison: bundled real text, a passkey grid, saved prompt sets.

A ``PromptPlan`` says what to run before the model (and its tokenizer) is loaded, so bad options fail
first; ``build_tasks`` turns it into the prompts of the run for a loaded model, skipping (and naming)
what does not fit its context. Problems are ``PromptError``s: one line naming the option.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from ..files.prompts import PASSKEY_PREFIX, PromptError, parse_passkey_name, passkey_prompt, resolve_prompt
from .ruler import RULER_KINDS, ruler_prompt, ruler_suite
from .suite_defaults import (  # noqa: F401  (re-exported)
    ALL_TEXT,
    QUICK_DEPTHS,
    QUICK_LENGTHS,
    QUICK_MIN_BUDGET,
    QUICK_TEXT,
    QUICK_TOKENS,
)
from .tasks import (
    DEFAULT_DEPTHS,
    DEFAULT_LENGTHS,
    MAX_NEEDLES,
    PasskeyGrid,
    TaskKind,
    TaskPrompt,
    is_task_prompt_file,
    load_task_prompts,
    multikey_prompt,
    passkey_grid,
)

Warn = Callable[[str], None]


@dataclass(frozen=True)
class PromptPlan:
    """What to run, before the model (and its tokenizer) is loaded."""

    specs: tuple[str, ...]  # prompt files, bundled names, or prompt sets saved by compare
    tokens: int  # length of bundled prompts
    lengths: tuple[int, ...]  # passkey grid rows (empty: no grid)
    depths: tuple[float, ...]
    needles: int
    seed: int
    truncate: bool
    full_grid: bool  # --passkey without lengths: 1K, 2K, 4K, ... up to the model's context
    ruler: int = 0  # seeds of each RULER-style task at each grid length (0: none; analysis/evaluation/ruler.py)

    @classmethod
    def from_options(cls, specs: list[str], *, quick: bool, passkey: bool, lengths, depths, needles: int,
                     seed: int, no_text: bool, tokens: Optional[int], truncate: bool,
                     default_tokens: int, ruler: int = 0) -> "PromptPlan":
        """The plan of `sharedattn compare`'s options; ``default_tokens``: the length of bundled
        prompts when ``tokens`` is None and the run is not quick."""
        if tokens is not None and tokens < 1:
            raise PromptError(f"--tokens must be positive, got {tokens}")
        if ruler < 0:
            raise PromptError(f"--ruler must be >= 0 seeds, got {ruler}")
        for spec in specs:
            parse_task_name(spec)  # a malformed task name fails here, before the model loads
        text = tuple(specs) or (() if no_text else (QUICK_TEXT if quick else ALL_TEXT))
        grid_wanted = passkey or quick or depths is not None or needles > 0 or (lengths is not None and not ruler)
        full = (grid_wanted or ruler > 0) and lengths is None and not quick
        lengths = lengths or (QUICK_LENGTHS if quick else ())
        depths = depths or ((QUICK_DEPTHS if quick else DEFAULT_DEPTHS) if grid_wanted else ())
        PasskeyGrid(lengths or (1024,), depths or (0.5,), seed, needles)  # validate now, before the model loads
        if not text and not grid_wanted and not ruler:
            raise PromptError("nothing to run: no prompts and no passkey grid (drop --no-text or add --passkey)")
        return cls(text, tokens or (QUICK_TOKENS if quick else default_tokens), tuple(lengths),
                   tuple(depths), needles, seed, truncate, full, ruler)

    def to_json(self) -> dict:
        return asdict(self)


def _grid_lengths(plan: PromptPlan, context: int) -> tuple[list[int], list[int]]:
    lengths = list(plan.lengths)
    if plan.full_grid:
        lengths = [n for n in DEFAULT_LENGTHS if n <= context] or [min(DEFAULT_LENGTHS[0], context)]
    return [n for n in lengths if n <= context], [n for n in lengths if n > context]


_MULTIKEY = "multikey"
_RULER_NAMES = {kind.value: kind for kind in RULER_KINDS}


def parse_task_name(spec: str) -> Optional[tuple[TaskKind, dict]]:
    """The task and its arguments of a generated prompt named the way a grid names it in its
    results (``passkey:depth=D,seed=S``, ``multikey:needles=N,seed=S``, ``ruler-mq:seed=S``, ...),
    so any row of a grid can be run again on its own; None for anything else (a file that exists
    is a file). ``PromptError`` for a task name with arguments it does not take."""
    head, _, args = spec.partition(":")
    if Path(spec).exists() or (head != PASSKEY_PREFIX and head != _MULTIKEY and head not in _RULER_NAMES):
        return None
    if head == PASSKEY_PREFIX:
        return TaskKind.PASSKEY, parse_passkey_name(spec)
    allowed, form = (("needles", "seed"), "needles=4,seed=0") if head == _MULTIKEY else (("seed",), "seed=0")
    out: dict = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        if key not in allowed or not value.isdigit():
            raise PromptError(f"prompt {spec!r}: use {head}:{form}")
        out[key] = int(value)
    if head == _MULTIKEY:
        if not 2 <= out.get("needles", 4) <= MAX_NEEDLES:
            raise PromptError(f"prompt {spec!r}: needles must be 2..{MAX_NEEDLES}")
        return TaskKind.MULTIKEY, out
    return _RULER_NAMES[head], out


def named_task(spec: str, tokenizer, tokens: int) -> Optional[TaskPrompt]:
    """The generated prompt ``spec`` names (``parse_task_name``) at ``tokens`` tokens, as the task
    it is (its kind sets how many tokens are generated and how the answer is scored); None when
    ``spec`` names no task."""
    parsed = parse_task_name(spec)
    if parsed is None:
        return None
    kind, args = parsed
    seed = args.get("seed", 0)
    if kind == TaskKind.PASSKEY:
        depth = args.get("depth", 0.5)
        return TaskPrompt(passkey_prompt(tokenizer, tokens, depth, seed), kind, tokens, depth, seed)
    if kind == TaskKind.MULTIKEY:
        return TaskPrompt(multikey_prompt(tokenizer, tokens, args.get("needles", 4), seed), kind, tokens, 0.5, seed)
    return TaskPrompt(ruler_prompt(kind, tokenizer, tokens, seed), kind, tokens, None, seed)


def _text_task(spec: str, plan: PromptPlan, loaded, context: int, skipped: list[str], warn: Warn) -> list:
    if is_task_prompt_file(Path(spec)):
        return load_task_prompts(Path(spec))
    task = named_task(spec, loaded.tokenizer, plan.tokens)  # build_tasks checked tokens against the context
    if task is not None:
        return [task]
    prompt = resolve_prompt(spec, loaded.tokenizer, tokens=plan.tokens, max_tokens=sys.maxsize)
    if prompt.num_tokens > context:
        if not plan.truncate:
            note = f"{spec} ({prompt.num_tokens} tokens > context {context}; use --truncate)"
            warn(f"skipping prompt {note}")
            skipped.append(note)
            return []
        prompt = resolve_prompt(spec, loaded.tokenizer, tokens=plan.tokens, max_tokens=context, truncate=True)
    return [TaskPrompt(prompt, TaskKind.TEXT, prompt.num_tokens)]


def build_tasks(plan: PromptPlan, loaded, warn: Optional[Warn] = None) -> tuple[list, list[str]]:
    """The prompts of the run (text first, then the passkey grid, then the RULER-style tasks) and the
    ones skipped, named;
    ``warn`` hears of each skip as it happens."""
    say = warn or (lambda _msg: None)
    context = loaded.fingerprint.max_positions or sys.maxsize
    if plan.tokens > context and plan.specs:
        raise PromptError(f"--tokens {plan.tokens} is longer than the model's context of {context} tokens")
    skipped: list[str] = []
    tasks = [t for spec in plan.specs for t in _text_task(spec, plan, loaded, context, skipped, say)]
    if plan.depths or plan.ruler:
        lengths, too_long = _grid_lengths(plan, context)
        for n in too_long:
            note = f"{'passkey' if plan.depths else 'task'} length {n} (longer than the model's context of {context})"
            say(f"skipping {note}")
            skipped.append(note)
        if lengths and plan.depths:
            tasks += passkey_grid(loaded.tokenizer, PasskeyGrid(tuple(lengths), plan.depths, plan.seed,
                                                                plan.needles))
        if lengths and plan.ruler:
            tasks += ruler_suite(loaded.tokenizer, lengths, seeds=plan.ruler, seed=plan.seed)
    if not tasks:
        raise PromptError("no prompt left to run: " + "; ".join(skipped))
    return tasks, skipped
