"""Inputs of `sharedattn compare`: which prompts (text, passkey grid, saved sets) and method configs."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .common import DEFAULT_TOKENS, UserError, err_console

ALL_TEXT = ("stdlib-prose", "stdlib-code", "stdlib-mixed", "licenses")
QUICK_TEXT = ("stdlib-prose", "stdlib-code")
QUICK_TOKENS = 1024
QUICK_LENGTHS = (1024,)
QUICK_DEPTHS = (0.0, 0.5, 1.0)


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

    @classmethod
    def from_options(cls, specs: list[str], *, quick: bool, passkey: bool, lengths, depths, needles: int,
                     seed: int, no_text: bool, tokens: Optional[int], truncate: bool) -> "PromptPlan":
        from sharedattn.analysis.evaluation.tasks import DEFAULT_DEPTHS, PasskeyGrid

        if tokens is not None and tokens < 1:
            raise UserError(f"--tokens must be positive, got {tokens}")
        text = tuple(specs) or (() if no_text else (QUICK_TEXT if quick else ALL_TEXT))
        grid_wanted = passkey or quick or lengths is not None or depths is not None or needles > 0
        full = grid_wanted and lengths is None and not quick
        lengths = lengths or (QUICK_LENGTHS if quick else ())
        depths = depths or ((QUICK_DEPTHS if quick else DEFAULT_DEPTHS) if grid_wanted else ())
        PasskeyGrid(lengths or (1024,), depths or (0.5,), seed, needles)  # validate now, before the model loads
        if not text and not grid_wanted:
            raise UserError("nothing to run: no prompts and no passkey grid (drop --no-text or add --passkey)")
        return cls(text, tokens or (QUICK_TOKENS if quick else DEFAULT_TOKENS), tuple(lengths),
                   tuple(depths), needles, seed, truncate, full)

    def to_json(self) -> dict:
        return asdict(self)


def method_configs(cfg, loaded, **fields) -> dict:
    """One config per method of the run (dense included), sharing the block size and dense_below."""
    from sharedattn.analysis.method.method_config import make_config

    from .method_options import default_block_size

    fields["block_size"] = default_block_size(loaded, fields.get("block_size"))
    return {m: make_config(m, **fields) for m in cfg.run_order}


def _grid_lengths(plan: PromptPlan, context: int) -> tuple[list[int], list[int]]:
    from sharedattn.analysis.evaluation.tasks import DEFAULT_LENGTHS

    lengths = list(plan.lengths)
    if plan.full_grid:
        lengths = [n for n in DEFAULT_LENGTHS if n <= context] or [min(DEFAULT_LENGTHS[0], context)]
    return [n for n in lengths if n <= context], [n for n in lengths if n > context]


def _text_task(spec: str, plan: PromptPlan, loaded, context: int, skipped: list[str]) -> list:
    from sharedattn.analysis.files.prompts import resolve_prompt
    from sharedattn.analysis.evaluation.tasks import TaskKind, TaskPrompt, is_task_prompt_file, load_task_prompts

    if is_task_prompt_file(Path(spec)):
        return load_task_prompts(Path(spec))
    prompt = resolve_prompt(spec, loaded.tokenizer, tokens=plan.tokens, max_tokens=sys.maxsize)
    if prompt.num_tokens > context:
        if not plan.truncate:
            note = f"{spec} ({prompt.num_tokens} tokens > context {context}; use --truncate)"
            err_console.print(f"[yellow]warning:[/] skipping prompt {note}")
            skipped.append(note)
            return []
        prompt = resolve_prompt(spec, loaded.tokenizer, tokens=plan.tokens, max_tokens=context, truncate=True)
    return [TaskPrompt(prompt, TaskKind.TEXT, prompt.num_tokens)]


def build_tasks(plan: PromptPlan, loaded) -> tuple[list, list[str]]:
    """The prompts of the run (text first, then the passkey grid) and the ones skipped, named."""
    from sharedattn.analysis.evaluation.tasks import PasskeyGrid, passkey_grid

    context = loaded.fingerprint.max_positions or sys.maxsize
    if plan.tokens > context and plan.specs:
        raise UserError(f"--tokens {plan.tokens} is longer than the model's context of {context} tokens")
    skipped: list[str] = []
    tasks = [t for spec in plan.specs for t in _text_task(spec, plan, loaded, context, skipped)]
    if plan.depths:
        lengths, too_long = _grid_lengths(plan, context)
        for n in too_long:
            note = f"passkey length {n} (longer than the model's context of {context})"
            err_console.print(f"[yellow]warning:[/] skipping {note}")
            skipped.append(note)
        if lengths:
            tasks += passkey_grid(loaded.tokenizer, PasskeyGrid(tuple(lengths), plan.depths, plan.seed,
                                                                plan.needles))
    if not tasks:
        raise UserError("no prompt left to run: " + "; ".join(skipped))
    return tasks, skipped
