"""One sparse method against dense on one prompt, in one process: the harness of `sharedattn prefill`.

Dense and the method each run ``warmup + repeats`` times; the timed runs give medians and spreads,
the last run of each the logits compared (``logit_fidelity``) and the greedy answers. One more,
instrumented pass of the method (unless skipped) measures each layer's attention-output error
against SDPA on the same inputs, summarised as compare's rows are (``layer_error_stats``).
``report_document`` is the JSON document the command writes and prints. Like ``compare``, this
module needs a loaded model (``analysis.hf.models.LoadedModel``) but imports no transformers.
"""
from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass

from ..method.method_config import DenseConfig, MethodConfig, MethodName
from .compare import layer_error_stats
from .tasks import answer_found


@dataclass
class PrefillComparison:
    """The runs of one method and of dense on the same prompt (the last of each is compared)."""

    method: MethodName
    dense_runs: list  # [analysis.hf.prefill_run.PrefillRun], timed (warm-up runs dropped)
    method_runs: list
    layer_errors: list[float] | None  # the method's relative error per layer; None: not measured

    @property
    def dense(self):
        return self.dense_runs[-1]

    @property
    def ours(self):
        return self.method_runs[-1]

    def fidelity(self):
        """``analysis.hf.prefill_run.Fidelity`` of the method's last logits against dense's."""
        from ..hf.prefill_run import logit_fidelity

        return logit_fidelity(self.dense.logits, self.ours.logits)

    def timing(self) -> dict:
        """``{dense|method: {ttft_s|attention_s: spread}}`` over the timed runs."""
        return {name: {"ttft_s": spread([r.seconds for r in runs]),
                       "attention_s": spread([r.attention_seconds for r in runs])}
                for name, runs in (("dense", self.dense_runs), (self.method.value, self.method_runs))}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def timed_runs(loaded, ids, method: MethodName, config: MethodConfig, lookup, *, repeats: int, warmup: int,
               chunk: int | None, max_new_tokens: int, use_graphs: bool) -> list:
    """``warmup + repeats`` prefills; the last ``repeats`` come back."""
    from ..hf.prefill_run import run_prefill

    runs = []
    for i in range(warmup + repeats):
        run = run_prefill(loaded, ids, method, config, lookup, chunk=chunk, max_new_tokens=max_new_tokens,
                          use_graphs=use_graphs)
        if i >= warmup:
            runs.append(run)
    return runs


def prefill_against_dense(loaded, input_ids, method: MethodName, config: MethodConfig, lookup=None, *,
                          repeats: int = 1, warmup: int = 0, chunk: int | None = None, max_new_tokens: int = 16,
                          use_graphs: bool = True, layer_errors: bool = True) -> PrefillComparison:
    """Dense (at ``config``'s block size) and ``method`` side by side, then, with ``layer_errors``, one
    pass measuring the method's error in each layer. ``lookup`` is needed only for shareprefill."""
    from ..hf.prefill_run import run_prefill

    kw = dict(repeats=repeats, warmup=warmup, chunk=chunk, max_new_tokens=max_new_tokens, use_graphs=use_graphs)
    dense_runs = timed_runs(loaded, input_ids, MethodName.DENSE, DenseConfig(block_size=config.block_size),
                            None, **kw)
    method_runs = timed_runs(loaded, input_ids, method, config, lookup, **kw)
    errors = None
    if layer_errors:
        errors = run_prefill(loaded, input_ids, method, config, lookup, compare_dense=True,
                             chunk=chunk, use_graphs=use_graphs).layer_errors
    return PrefillComparison(method, dense_runs, method_runs, errors)


def machine_name(loaded) -> str:
    """The GPU's name, or the CPU's architecture and core count."""
    import torch

    device = next(loaded.model.parameters()).device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def _answer(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


def kernel_report(run, config) -> dict:
    """Which attention backend each layer of the method's last run used: ``requested`` (the
    config's kernel), ``per_layer`` (flash, triton, reference, several joined by +, or sdpa when the
    layer ran dense) and ``layers`` (how many layers each)."""
    per_layer = list(getattr(run, "layer_kernels", []) or [])
    layers: dict[str, int] = {}
    for name in per_layer:
        layers[name] = layers.get(name, 0) + 1
    kernel = getattr(config, "kernel", "auto")
    return {"requested": getattr(kernel, "value", kernel), "per_layer": per_layer, "layers": layers}


def _summary(result: PrefillComparison, timing: dict, fidelity, machine: str, tokens: int, answers) -> dict:
    dense_t, ours_t = timing["dense"], timing[result.method.value]
    err_mean, err_worst, _ = layer_error_stats(result.layer_errors)
    return {
        "method": result.method.value, "tokens": tokens, "machine": machine,
        "ttft_dense_s": dense_t["ttft_s"]["median"], "ttft_s": ours_t["ttft_s"]["median"],
        "attention_dense_s": dense_t["attention_s"]["median"], "attention_s": ours_t["attention_s"]["median"],
        "speedup_ttft": dense_t["ttft_s"]["median"] / max(ours_t["ttft_s"]["median"], 1e-12),
        "speedup_attention": dense_t["attention_s"]["median"] / max(ours_t["attention_s"]["median"], 1e-12),
        "density": result.ours.trace.overall_density(), "kl_last": fidelity.kl_last, "kl_mean": fidelity.kl_mean,
        "top1_last": fidelity.top1_last, "top1_agreement": fidelity.top1_agreement,
        "answer_matches_dense": answers[1] == answers[0] if result.ours.generated else None,
        "mean_layer_error": err_mean, "worst_layer_error": err_worst,
        "kernels": kernel_report(result.ours, result.ours.config)["layers"],
    }


def report_document(result: PrefillComparison, *, command: str, machine: str, loaded, prompt, config,
                    lookup_note: str | None, bench: bool) -> dict:
    """Everything `sharedattn prefill` reports (JSON-ready); ``summary`` is its one-line digest."""
    method, trace = result.method, result.ours.trace
    timing, fidelity = result.timing(), result.fidelity()
    dense_answer, ours_answer = _answer(loaded.tokenizer, result.dense.generated), _answer(
        loaded.tokenizer, result.ours.generated)
    summary = _summary(result, timing, fidelity, machine, prompt.num_tokens, (dense_answer, ours_answer))
    return {
        "command": command, "machine": machine, "bench": bench,
        "model": loaded.fingerprint.to_json(), "model_realistic": loaded.realistic,
        "prompt": {"name": prompt.name, "tokens": prompt.num_tokens, "sha256": prompt.sha256,
                   "expected_answer": prompt.answer},
        "method": method.value, "config": config.to_json(), "lookup": lookup_note,
        "timing": timing, "decision_shares": trace.decision_shares(),
        "decision_counts": trace.decision_counts(), "decision_graphs": result.ours.decision_graphs,
        "kernels": kernel_report(result.ours, config),
        "per_layer_density": trace.per_layer_density(), "dense_layers": trace.dense_layers(),
        "layer_errors": result.layer_errors,
        "fidelity": vars(fidelity),
        "generation": {"dense": dense_answer, method.value: ours_answer,
                       "correct_dense": answer_found(prompt.answer, dense_answer),
                       f"correct_{method.value}": answer_found(prompt.answer, ours_answer)},
        "summary": summary,
    }
