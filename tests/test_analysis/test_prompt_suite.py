"""The compare prompt suite: plans checked before the model loads, tasks built for a model's context."""
import pytest

from sharedattn.analysis.evaluation.prompt_suite import (
    ALL_TEXT,
    QUICK_DEPTHS,
    QUICK_LENGTHS,
    QUICK_TEXT,
    QUICK_TOKENS,
    PromptPlan,
    build_tasks,
)
from sharedattn.analysis.evaluation.ruler import RULER_KINDS
from sharedattn.analysis.evaluation.tasks import DEFAULT_DEPTHS, TaskKind
from sharedattn.analysis.files.prompts import PromptError
from sharedattn.analysis.method.method_config import ConfigError


def plan(specs=(), **options):
    base = dict(quick=False, passkey=False, lengths=None, depths=None, needles=0, seed=0, no_text=False,
                tokens=None, truncate=False, default_tokens=2048)
    return PromptPlan.from_options(list(specs), **{**base, **options})


def test_quick_plan_is_two_texts_and_a_small_grid():
    p = plan(quick=True)
    assert (p.specs, p.tokens, p.lengths, p.depths, p.full_grid) == (QUICK_TEXT, QUICK_TOKENS, QUICK_LENGTHS,
                                                                      QUICK_DEPTHS, False)


def test_default_plan_is_the_texts_at_the_default_length_and_no_grid():
    p = plan(default_tokens=1536)
    assert (p.specs, p.tokens, p.lengths, p.depths) == (ALL_TEXT, 1536, (), ())
    grid = plan(passkey=True, tokens=700)
    assert grid.full_grid and grid.depths == DEFAULT_DEPTHS and grid.tokens == 700
    assert plan(["notes.txt"], quick=True).specs == ("notes.txt",)


@pytest.mark.parametrize("options,error,words", [
    (dict(tokens=0), PromptError, "--tokens must be positive"),
    (dict(no_text=True), PromptError, "nothing to run"),
    (dict(passkey=True, depths=(1.5,)), ConfigError, "depth"),  # the grid's own config check
    (dict(ruler=-1), PromptError, "--ruler must be >= 0"),
])
def test_bad_plans_fail_before_the_model_loads(options, error, words):
    with pytest.raises(error, match=words):
        plan(**options)


def test_ruler_plan_uses_the_grid_lengths_without_a_passkey_grid():
    p = plan(no_text=True, lengths=(1024, 2048), ruler=2)
    assert (p.lengths, p.depths, p.ruler) == ((1024, 2048), (), 2)
    assert plan(no_text=True, ruler=1).full_grid  # no lengths: 1K, 2K, ... up to the context


def test_tasks_skip_what_does_not_fit_the_context_and_say_so(tiny_model):
    context = tiny_model.fingerprint.max_positions
    heard = []
    tasks, skipped = build_tasks(plan(["stdlib-code"], tokens=200, lengths=(256, 2 * context), depths=(0.5,)),
                                 tiny_model, warn=heard.append)
    assert [t.kind for t in tasks] == [TaskKind.TEXT, TaskKind.PASSKEY]
    assert tasks[0].prompt.num_tokens == 200 and tasks[1].length == 256
    assert skipped == [f"passkey length {2 * context} (longer than the model's context of {context})"]
    assert heard == [f"skipping {skipped[0]}"]


def test_nothing_left_or_too_long_text_is_an_error(tiny_model):
    context = tiny_model.fingerprint.max_positions
    with pytest.raises(PromptError, match="no prompt left to run: passkey length"):
        build_tasks(plan(no_text=True, lengths=(2 * context,), depths=(0.5,)), tiny_model)
    with pytest.raises(PromptError, match="longer than the model's context"):
        build_tasks(plan(["stdlib-code"], tokens=2 * context), tiny_model)


def test_a_grid_row_named_as_in_the_results_runs_again_as_the_same_task(tiny_model):
    grid, _ = build_tasks(plan(no_text=True, lengths=(1024,), depths=(0.25,), needles=3, ruler=1, seed=5), tiny_model)
    assert {t.kind for t in grid} == {TaskKind.PASSKEY, TaskKind.MULTIKEY, *RULER_KINDS}
    for row in grid:
        (again,), _ = build_tasks(plan([row.prompt.name], tokens=row.length), tiny_model)
        assert (again.kind, again.length, again.depth, again.seed) == (row.kind, row.length, row.depth, row.seed)
        assert again.prompt == row.prompt  # name, text, token ids and answer


@pytest.mark.parametrize("name,words", [
    ("ruler-mq:seed=x", "use ruler-mq:seed=0"),
    ("ruler-vt:depth=0.5", "use ruler-vt:seed=0"),
    ("multikey:needles=1,seed=2", "needles must be 2.."),
    ("multikey:colour=red", "use multikey:needles=4,seed=0"),
    ("passkey:depth=2", "depth must be between 0 and 1"),
])
def test_a_malformed_task_name_fails_before_the_model_loads(name, words):
    with pytest.raises(PromptError, match=words):
        plan([name])
