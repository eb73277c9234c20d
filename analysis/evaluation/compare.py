"""Run several prefill methods on the same prompts in one process, against dense, and collect rows.

Dense always runs first on every prompt, in the same harness, and is the reference for everything
else: layer output errors (measured inside each layer against SDPA on the same inputs), KL and
top-1 agreement of the last positions' logits, log-likelihood difference, and the task answer.
This module needs a loaded model (``analysis.hf.models.LoadedModel``) but imports no transformers.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Callable

from ...kernels.limits import ConfigError
from ..files.distributed import World
from ..method.method_config import MethodConfig, MethodName
from .tasks import TaskKind, TaskPrompt, answer_found, answer_tokens, mean_loglik


@dataclass(frozen=True)
class CompareConfig:
    """How each (method, prompt) run is measured."""

    methods: tuple[MethodName, ...]  # dense is added first if missing: it is the reference
    eval_positions: int = 256  # last positions scored: KL, top-1 agreement, log-likelihood
    max_new_tokens: int = 10  # greedy tokens after prompts that have an answer
    measure_recall: bool = True  # true attention mass inside kept blocks (one exact pass a layer)
    timing_pass: bool = False  # time a separate uninstrumented prefill instead of the measured one

    def __post_init__(self):
        if not self.methods:
            raise ConfigError("the method list is empty")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError("a method is listed twice")
        if self.eval_positions < 2:
            raise ConfigError(f"eval_positions must be at least 2, got {self.eval_positions}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")

    @property
    def run_order(self) -> tuple[MethodName, ...]:
        rest = tuple(m for m in self.methods if m is not MethodName.DENSE)
        return (MethodName.DENSE, *rest)

    def to_json(self) -> dict:
        return {**asdict(self), "methods": [m.value for m in self.methods]}


@dataclass
class CompareRow:
    """One method on one prompt."""

    method: str
    prompt: str
    kind: str
    length: int
    depth: float | None
    tokens: int
    density: float
    recall: float | None
    error_mean: float | None  # relative error of attention outputs, mean over layers
    error_worst: float | None  # and the worst layer
    worst_layer: int | None
    kl_mean: float
    kl_last: float
    top1: float  # share of evaluated positions whose argmax agrees with dense
    top1_last: bool
    loglik: float  # mean token log-likelihood over the evaluated positions
    loglik_delta: float  # this minus dense (negative: the method predicts the text worse)
    answer: str | None
    continuation: str
    correct: bool | None  # exact match, for prompts with an answer
    seconds: float
    attention_seconds: float
    decisions: dict = field(default_factory=dict)  # share of heads by decision
    # dense's final-position log-probability gap between its top two tokens (nats): below
    # NEAR_TIE, or at most one step of the precision the model computes its logits in
    # (``dense_step``; bf16 at logits 16-32: 0.125), a different final argmax is a coin flip
    # rather than a fidelity failure (``near_tie``)
    dense_margin: float | None = None
    dense_step: float | None = None

    @property
    def near_tie(self) -> bool:
        if self.dense_margin is None:
            return False
        return self.dense_margin < NEAR_TIE or (self.dense_step is not None and self.dense_margin <= self.dense_step)

    def to_json(self) -> dict:
        return {k: _clean(v) for k, v in asdict(self).items()}


CSV_COLUMNS = ("method", "prompt", "kind", "length", "depth", "tokens", "density", "recall",
               "error_mean", "error_worst", "worst_layer", "kl_mean", "kl_last", "top1", "top1_last",
               "loglik", "loglik_delta", "answer", "correct", "seconds", "attention_seconds", "dense_margin",
               "dense_step")
NEAR_TIE = 0.1  # nats between dense's top two final tokens


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, float):
        return round(value, 6)
    return value


@dataclass
class RunRecord:
    """What the harness keeps of one run besides its row: the per-head trace, for the report."""

    method: MethodName
    prompt: str
    trace: object  # analysis.trace.PrefillTrace


@dataclass
class CompareResult:
    config: CompareConfig
    method_configs: dict  # method value -> config json
    rows: list[CompareRow]
    records: list[RunRecord]
    skipped: list[str] = field(default_factory=list)  # prompts skipped, with the reason

    def summary(self) -> list[dict]:
        dense = {r.prompt: r for r in self.rows if r.method == MethodName.DENSE.value}
        return [summarise(m.value, [r for r in self.rows if r.method == m.value], dense)
                for m in self.config.run_order]

    def to_json(self) -> dict:
        return {"config": self.config.to_json(), "method_configs": self.method_configs,
                "summary": self.summary(), "rows": [r.to_json() for r in self.rows],
                "skipped": self.skipped}

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.to_json().items()})
        return buf.getvalue()


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


def summarise(method: str, rows: list[CompareRow], dense: dict[str, CompareRow] | None = None) -> dict:
    """Per-method aggregates over prompts (means; the worst layer error is a maximum).

    ``top1_last``: prompts whose final-position argmax equals dense's; ``top1_last_near_tie_flips``:
    of the others, those on a near tie of dense's top two final tokens (``CompareRow.near_tie``). With ``dense``
    (prompt -> dense row): ``dense_right`` = tasks dense answers correctly, ``kept_right`` = those this
    method answers correctly too (the "identical to dense wherever dense is right" test)."""
    scored = [r.correct for r in rows if r.correct is not None]
    right = [r for r in rows if dense and r.prompt in dense and dense[r.prompt].correct]
    text = [r.loglik_delta for r in rows if r.kind == TaskKind.TEXT.value]
    worst = [r.error_worst for r in rows if r.error_worst is not None]
    out = {"method": method, "prompts": len(rows),
           "density": _mean(r.density for r in rows), "recall": _mean(r.recall for r in rows),
           "error_mean": _mean(r.error_mean for r in rows), "error_worst": max(worst) if worst else None,
           "kl_mean": _mean(r.kl_mean for r in rows), "top1": _mean(r.top1 for r in rows),
           "loglik_delta": _mean(text), "task_correct": sum(scored) if scored else None,
           "task_total": len(scored), "top1_last": sum(bool(r.top1_last) for r in rows),
           "top1_last_near_tie_flips": sum(not r.top1_last and r.near_tie for r in rows),
           "dense_right": len(right) if dense else None,
           "kept_right": sum(bool(r.correct) for r in right) if dense else None,
           "seconds": sum(r.seconds for r in rows),
           "attention_seconds": sum(r.attention_seconds for r in rows)}
    return {k: _clean(v) for k, v in out.items()}


Progress = Callable[[str], None]


def layer_error_stats(errs: list[float] | None) -> tuple[float | None, float | None, int | None]:
    """Mean, worst and worst layer of a run's per-layer attention-output errors (None: not measured)."""
    if not errs:
        return None, None, None
    worst = max(range(len(errs)), key=lambda i: errs[i])
    return statistics.fmean(errs), errs[worst], worst


def _measured_run(loaded, task: TaskPrompt, method, mcfg, lookup, cfg: CompareConfig, generate: bool):
    from ..hf.prefill_run import run_prefill

    positions = min(cfg.eval_positions, task.prompt.num_tokens)
    instrumented = method is not MethodName.DENSE
    run = run_prefill(loaded, task.prompt.input_ids, method, mcfg, lookup, compare_dense=instrumented,
                      measure_recall=cfg.measure_recall and instrumented,
                      max_new_tokens=max(cfg.max_new_tokens, answer_tokens(task.kind)) if generate else 0,
                      eval_positions=positions)
    seconds, attn = run.seconds, run.attention_seconds
    if cfg.timing_pass and instrumented:
        clean = run_prefill(loaded, task.prompt.input_ids, method, mcfg, lookup, eval_positions=1)
        seconds, attn = clean.seconds, clean.attention_seconds
    return run, seconds, attn


def _row(task: TaskPrompt, run, seconds, attn, dense_logits, dense_loglik, tokenizer,
         logit_dtype=None) -> CompareRow:
    from ..hf.prefill_run import logit_fidelity

    fid = logit_fidelity(dense_logits, run.logits)
    err_mean, err_worst, worst_layer = layer_error_stats(run.layer_errors)
    if run.method is MethodName.DENSE:
        err_mean, err_worst, worst_layer = 0.0, 0.0, None
    continuation = tokenizer.decode(run.generated) if run.generated else ""
    loglik = mean_loglik(run.logits, task.prompt.input_ids)
    recall = run.trace.mean_recall()
    if run.method is MethodName.DENSE:
        recall = 1.0
    return CompareRow(
        run.method.value, task.name, task.kind.value, task.length, task.depth, task.prompt.num_tokens,
        run.trace.overall_density(), recall, err_mean, err_worst, worst_layer,
        fid.kl_mean, fid.kl_last, fid.top1_agreement, fid.top1_last, loglik,
        loglik - dense_loglik, task.prompt.answer, continuation,
        answer_found(task.prompt.answer, continuation), seconds, attn, run.trace.decision_shares(),
        final_margin(dense_logits), logit_step(dense_logits, logit_dtype))


def final_margin(logits) -> float:
    """Log-probability gap (nats) between the top two tokens at the last position of ``[P, V]``."""
    top = logits[-1].float().log_softmax(-1).topk(2).values
    return float(top[0] - top[1])


def logit_step(logits, dtype=None) -> float:
    """Spacing of ``dtype`` (a torch dtype, default fp32) at the largest final-position logit of
    ``[P, V]``: the smallest gap two logits of that size can have when the model computes them in
    ``dtype``."""
    import torch

    dtype = dtype or torch.float32
    top = float(logits[-1].float().abs().max())
    info = torch.finfo(dtype)
    return info.eps * 2.0 ** math.floor(math.log2(top)) if top >= info.tiny else info.tiny


def run_compare(loaded, tasks: list[TaskPrompt], configs: dict[MethodName, MethodConfig], lookup,
                cfg: CompareConfig, progress: Progress | None = None, reuse: dict | None = None,
                world: World | None = None) -> CompareResult | None:
    """Every method of ``cfg.run_order`` on every prompt; ``configs`` maps each method to its config
    (dense included). ``lookup`` is needed only for shareprefill.

    ``reuse`` (a dict the caller keeps between calls on the same model, prompts and lookup) holds each
    finished run under (method, its config, prompt): a later call whose run would be identical
    (dense, or a method whose config did not change) takes it from there instead of running again.

    ``world`` (default one process): under torchrun each rank runs its share of the prompts (every
    method on each) and rank 0 gets the merged result, rows in the prompts' order as one process
    makes them; the other ranks get None."""
    say = progress or (lambda _msg: None)
    world = world or World()
    per_task = world.map(tasks, lambda i, task: _task_runs(loaded, i, task, len(tasks), configs, lookup, cfg,
                                                           say, reuse))
    if per_task is None:  # not rank 0
        return None
    rows = [row for task_rows, _ in per_task for row in task_rows]
    records = [record for _, task_records in per_task for record in task_records]
    method_configs = {m.value: configs[m].to_json() for m in cfg.run_order}
    return CompareResult(cfg, method_configs, rows, records)


def _task_runs(loaded, index: int, task: TaskPrompt, count: int, configs, lookup, cfg: CompareConfig,
               say: Progress, reuse: dict | None) -> tuple[list[CompareRow], list[RunRecord]]:
    """Every method on one prompt (dense first: the reference of the others); its rows and records."""
    generate = task.prompt.answer is not None
    dense_logits = dense_loglik = None
    rows: list[CompareRow] = []
    records: list[RunRecord] = []
    for method in cfg.run_order:
        key = (method, repr(sorted(configs[method].to_json().items())), task.name, task.prompt.sha256)
        if reuse is not None and key in reuse:
            row, record, logits = reuse[key]
        else:
            say(f"[{index + 1}/{count}] {task.name} ({task.prompt.num_tokens} tokens): {method.value}")
            run, seconds, attn = _measured_run(loaded, task, method, configs[method],
                                               lookup if method is MethodName.SHAREPREFILL else None,
                                               cfg, generate)
            logits = run.logits
            if method is MethodName.DENSE:  # runs first: the reference of the prompt's other rows
                dense_logits, dense_loglik = logits, mean_loglik(logits, task.prompt.input_ids)
            row = _row(task, run, seconds, attn, dense_logits, dense_loglik, loaded.tokenizer,
                       getattr(loaded.model, "dtype", None))
            record = RunRecord(method, task.name, run.trace)
            if reuse is not None:
                reuse[key] = (row, record, logits)
        if method is MethodName.DENSE:  # a reused dense row carries its own log-likelihood
            dense_logits, dense_loglik = logits, row.loglik
        rows.append(row)
        records.append(record)
    return rows, records


def parse_methods(text: str) -> tuple[MethodName, ...]:
    """``"dense,flexprefill"`` -> methods; ``ValueError`` naming an unknown or empty entry."""
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise ConfigError("--methods is empty: name at least one of " + ", ".join(m.value for m in MethodName))
    out = []
    for name in names:
        if not name:
            raise ConfigError(f"--methods {text!r} has an empty entry")
        try:
            method = MethodName(name)
        except ValueError:
            choices = ", ".join(m.value for m in MethodName)
            raise ConfigError(f"unknown method {name!r} in --methods (choose from {choices})") from None
        if method in out:
            raise ConfigError(f"method {name!r} is listed twice in --methods")
        out.append(method)
    return tuple(out)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((a <= x and b <= y) and (a < x or b < y) for j, (a, b) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def passkey_cells(rows: list[CompareRow], method: str) -> dict[tuple[int, float], bool]:
    """(length, depth) -> correct, for one method's single-key passkey rows."""
    return {(r.length, r.depth): bool(r.correct) for r in rows
            if r.method == method and r.kind == TaskKind.PASSKEY.value and r.correct is not None}


def trace_notes(result: CompareResult) -> list[dict]:
    """Per (method, prompt): the share of heads by decision and the mean density of each decision,
    the evidence for why a method won or lost on a prompt."""
    from ..method.method_config import Decision

    notes = []
    for rec in result.records:
        if rec.method is MethodName.DENSE:
            continue
        dec, den = rec.trace.decision.flatten(), rec.trace.density.flatten()
        per = {}
        for d in Decision:
            sel = dec == int(d)
            if bool(sel.any()):
                per[d.label] = {"share": round(float(sel.float().mean()), 4),
                                "density": round(float(den[sel].float().mean()), 4)}
        notes.append({"method": rec.method.value, "prompt": rec.prompt, "decisions": per})
    return notes
