"""The compare harness library: method parsing, tasks, rows against dense, Pareto front, figures."""
import math

import pytest
import torch

from sharedattn.analysis.evaluation.compare import (
    CompareConfig,
    CompareRow,
    pareto_front,
    parse_methods,
    passkey_cells,
    run_compare,
)
from sharedattn.analysis.evaluation.tasks import (
    PasskeyGrid,
    TaskKind,
    answer_found,
    load_task_prompts,
    mean_loglik,
    multikey_prompt,
    passkey_grid,
    save_task_prompts,
    text_prompts,
)
from sharedattn.analysis.files.prompts import PromptError
from sharedattn.analysis.method.method_config import MethodName, make_config


def test_parse_methods_accepts_names_and_rejects_bad_lists():
    assert parse_methods("dense, flexprefill") == (MethodName.DENSE, MethodName.FLEXPREFILL)
    for text, message in (("dense,magic", "unknown method 'magic'"), ("", "empty"), (" , ", "empty"),
                          ("dense,,a-shape", "empty entry"), ("dense,dense", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_methods(text)


def test_config_runs_dense_first_even_when_not_listed():
    cfg = CompareConfig((MethodName.FLEXPREFILL,))
    assert cfg.run_order == (MethodName.DENSE, MethodName.FLEXPREFILL)
    with pytest.raises(ValueError, match="empty"):
        CompareConfig(())


def test_pareto_front_keeps_undominated_points():
    pts = [(0.5, 0.1), (0.3, 0.2), (0.6, 0.3), (0.2, 0.5), (0.3, 0.25)]
    assert pareto_front(pts) == [3, 1, 0]


def test_passkey_grid_is_deterministic_and_sized(tiny_model):
    tok = tiny_model.tokenizer
    grid = PasskeyGrid((256, 384), (0.0, 1.0), seed=7, needles=3)
    a, b = passkey_grid(tok, grid), passkey_grid(tok, grid)
    assert [t.prompt.input_ids for t in a] == [t.prompt.input_ids for t in b]
    assert [t.kind for t in a].count(TaskKind.PASSKEY) == 4 and [t.kind for t in a].count(TaskKind.MULTIKEY) == 2
    assert all(t.prompt.num_tokens == t.length for t in a)
    assert len({t.prompt.answer for t in a}) == 6  # a different seed per cell


def test_multikey_prompt_hides_every_key_and_asks_for_one(tiny_model):
    p = multikey_prompt(tiny_model.tokenizer, 400, needles=4, seed=3)
    assert p.num_tokens == 400 and p.text.count("pass key is") >= 4 and p.answer in p.text
    with pytest.raises(PromptError, match="needs at least"):
        multikey_prompt(tiny_model.tokenizer, 30, needles=4)
    with pytest.raises(ValueError, match="needles"):
        PasskeyGrid(needles=1)


def test_answer_and_loglik_scoring():
    assert answer_found("12345", " 12 345.") is True and answer_found("12345", " 1234") is False
    assert answer_found(None, "x") is None
    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0 + 1e-9], [0.25, 0.75, 1e-9], [1.0, 1e-9, 1e-9]]))
    value = mean_loglik(logits, [9, 0, 1, 0])  # the 3 last positions predict 1, 0 (the last: nothing)
    assert math.isclose(value, (math.log(0.5) + math.log(0.25)) / 2, rel_tol=1e-5)


def test_prompt_set_round_trip(tiny_model, tmp_path):
    tasks = text_prompts(tiny_model.tokenizer, ["stdlib-code"], 128) + \
        passkey_grid(tiny_model.tokenizer, PasskeyGrid((200,), (0.5,)))
    path = save_task_prompts(tmp_path / "prompts.json", tasks, {"note": 1})
    back = load_task_prompts(path)
    assert [t.prompt.input_ids for t in back] == [t.prompt.input_ids for t in tasks]
    assert back[1].prompt.answer == tasks[1].prompt.answer and back[1].kind is TaskKind.PASSKEY


def test_run_compare_measures_every_method_against_dense(tiny_model):
    tasks = text_prompts(tiny_model.tokenizer, ["stdlib-prose"], 320) + \
        passkey_grid(tiny_model.tokenizer, PasskeyGrid((320,), (0.5,)))
    cfg = CompareConfig((MethodName.A_SHAPE, MethodName.FLEXPREFILL), eval_positions=32, max_new_tokens=3)
    configs = {m: make_config(m, block_size=64, dense_below=0, min_budget=64, local_tokens=64, sink_tokens=64)
               for m in cfg.run_order}
    result = run_compare(tiny_model, tasks, configs, None, cfg)
    assert [(r.method, r.prompt) for r in result.rows][:3] == [
        ("dense", "stdlib-prose"), ("a-shape", "stdlib-prose"), ("flexprefill", "stdlib-prose")]
    dense, ashape = result.rows[0], result.rows[1]
    assert dense.kl_mean == 0 and dense.top1 == 1 and dense.loglik_delta == 0 and dense.recall == 1
    assert ashape.density < 1 and 0 < ashape.recall < 1 and ashape.error_mean > 0
    assert ashape.error_worst >= ashape.error_mean and ashape.kl_mean >= 0
    pk = [r for r in result.rows if r.kind == "passkey"]
    assert len(pk) == 3 and all(r.correct is not None and r.answer for r in pk)
    summary = {s["method"]: s for s in result.summary()}
    assert summary["a-shape"]["task_total"] == 1 and summary["dense"]["error_mean"] == 0
    margins = {r.dense_margin for r in result.rows if r.prompt == "stdlib-prose"}
    assert len(margins) == 1 and next(iter(margins)) >= 0  # every method carries dense's margin
    assert result.to_csv().splitlines()[0].startswith("method,prompt,kind")
    assert len(result.to_csv().splitlines()) == 7


def test_run_compare_reuses_runs_whose_config_did_not_change(tiny_model, monkeypatch):
    from sharedattn.analysis.evaluation import compare as compare_mod

    calls = []
    real = compare_mod._measured_run
    monkeypatch.setattr(compare_mod, "_measured_run",
                        lambda loaded, task, method, *a: calls.append(method) or real(loaded, task, method, *a))
    tasks = text_prompts(tiny_model.tokenizer, ["stdlib-prose"], 320)
    cfg = CompareConfig((MethodName.A_SHAPE, MethodName.VERTICAL_SLASH), eval_positions=32, max_new_tokens=0)
    reuse: dict = {}
    results = []
    for gamma in (0.5, 0.9):
        configs = {m: make_config(m, block_size=64, dense_below=0, min_budget=64, local_tokens=64, gamma=gamma)
                   for m in cfg.run_order}
        results.append(run_compare(tiny_model, tasks, configs, None, cfg, reuse=reuse))
    assert calls == [MethodName.DENSE, MethodName.A_SHAPE, MethodName.VERTICAL_SLASH, MethodName.VERTICAL_SLASH]
    first, second = results
    assert second.rows[0] is first.rows[0] and second.rows[1] is first.rows[1]  # dense, a-shape: once
    assert second.rows[2] is not first.rows[2]  # vertical-slash at the other gamma ran again
    assert second.rows[2].kl_mean >= 0 and second.rows[2].top1 <= 1


def _row(method, prompt, density, error, length=None, depth=None, correct=None):
    kind = "passkey" if length else "text"
    return CompareRow(method, prompt, kind, length or 512, depth, length or 512, density, 0.9, error,
                      error * 2, 0, 0.01, 0.01, 0.9, True, -3.0, -0.01, "1" if length else None, "",
                      correct, 1.0, 0.5)


def test_figures_are_written(tmp_path):
    from sharedattn.analysis.plots.compare_plots import density_error_figure, passkey_grid_figure

    rows = [_row(m, p, d, e) for m, p, d, e in (("dense", "a", 1, 0), ("flexprefill", "a", 0.4, 0.02),
                                                  ("shareprefill", "a", 0.35, 0.01), ("a-shape", "b", 0.2, 0.3))]
    rows += [_row(m, f"pk{n}{d}", 0.5, 0.01, n, d, ok) for m in ("dense", "shareprefill")
             for n in (1024, 2048) for d, ok in ((0.0, True), (1.0, m == "dense"))]
    assert passkey_cells(rows, "shareprefill")[(2048, 1.0)] is False
    assert density_error_figure(rows, "t", tmp_path / "de.png").stat().st_size > 2000
    assert passkey_grid_figure(rows, "t", tmp_path / "pk.png").stat().st_size > 2000


def test_summary_counts_final_argmax_and_dense_right_answers():
    from sharedattn.analysis.evaluation.compare import summarise

    dense = {p: _row("dense", p, 1.0, 0.0, 1024, d, ok) for p, d, ok in
             (("pk-a", 0.0, True), ("pk-b", 0.5, False), ("pk-c", 1.0, True))}
    rows = [_row("vertical-slash", "pk-a", 0.5, 0.1, 1024, 0.0, False),
            _row("vertical-slash", "pk-b", 0.5, 0.1, 1024, 0.5, True),
            _row("vertical-slash", "pk-c", 0.5, 0.1, 1024, 1.0, True)]
    rows[0].top1_last = False
    s = summarise("vertical-slash", rows, dense)
    assert (s["dense_right"], s["kept_right"], s["task_correct"], s["top1_last"]) == (2, 1, 2, 2)
    assert summarise("vertical-slash", rows)["dense_right"] is None
    assert s["top1_last_near_tie_flips"] == 0  # no margin recorded
    rows[0].dense_margin, rows[1].dense_margin = 0.05, 0.01
    rows[1].top1_last = False
    rows[2].dense_margin, rows[2].top1_last = 2.0, False
    assert summarise("vertical-slash", rows)["top1_last_near_tie_flips"] == 2  # pk-a and pk-b, not pk-c
    rows[2].dense_margin, rows[2].dense_step = 0.125, 0.125  # one bf16 step apart at logits 16-32
    assert summarise("vertical-slash", rows)["top1_last_near_tie_flips"] == 3
    rows[2].dense_margin = 0.25
    assert summarise("vertical-slash", rows)["top1_last_near_tie_flips"] == 2


def test_logit_step_is_the_spacing_of_the_dtype_at_the_top_logit():
    from sharedattn.analysis.evaluation.compare import logit_step

    logits = torch.tensor([[0.0, 1.0], [3.0, -20.5]])  # final position: largest magnitude 20.5
    assert logit_step(logits, torch.bfloat16) == 0.125  # bf16 in [16, 32): 8 bits of mantissa
    assert logit_step(logits, torch.float16) == 2.0 ** -6
    assert logit_step(logits) == pytest.approx(16 * 2.0 ** -23)
    assert 20.5 + logit_step(logits, torch.bfloat16) == float(torch.tensor(20.625).to(torch.bfloat16))


def test_final_margin_is_the_gap_of_the_top_two_log_probabilities():
    from sharedattn.analysis.evaluation.compare import final_margin

    logits = torch.log(torch.tensor([[0.5, 0.5, 0.0 + 1e-9], [0.2, 0.5, 0.3]]))
    assert final_margin(logits) == pytest.approx(math.log(0.5 / 0.3), rel=1e-5)
