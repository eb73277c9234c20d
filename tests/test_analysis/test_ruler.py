"""RULER-style tasks: exact sizes, seeded, answers hidden as many times as meant, exact scoring."""
import re
from collections import Counter

import pytest

from sharedattn.analysis.evaluation.ruler import (
    GENERATORS,
    RULER_KINDS,
    docqa_prompt,
    freqwords_prompt,
    multiquery_prompt,
    multivalue_prompt,
    ruler_prompt,
    ruler_suite,
    vartrack_prompt,
)
from sharedattn.analysis.evaluation.tasks import (
    ANSWER_SEPARATOR,
    TaskKind,
    answer_found,
    answer_parts,
    answer_tokens,
    load_task_prompts,
    save_task_prompts,
)
from sharedattn.analysis.files.prompts import PromptError

KINDS = [k.value for k in RULER_KINDS]


@pytest.fixture(scope="module")
def tok():
    from sharedattn.analysis.hf.models import bundled_tokenizer

    return bundled_tokenizer()


def _question(text: str) -> str:
    return text[text.rindex("\n\n"):]


@pytest.mark.parametrize("kind", KINDS)
def test_generators_fit_exactly_and_are_seeded(tok, kind):
    make = GENERATORS[TaskKind(kind)]
    a, again, other = make(tok, 1024, 5), make(tok, 1024, 5), make(tok, 1024, 6)
    assert a.num_tokens == 1024 and make(tok, 2500, 5).num_tokens == 2500
    assert a.input_ids == again.input_ids and a.answer == again.answer
    assert a.input_ids != other.input_ids and a.answer != other.answer
    assert a.name == f"{kind}:seed=5" and other.name == f"{kind}:seed=6"
    assert all(part and part.strip() == part for part in answer_parts(a.answer))


@pytest.mark.parametrize("kind", KINDS)
def test_too_few_tokens_is_one_clear_error(tok, kind):
    with pytest.raises(PromptError, match=rf"^a [a-z-]+ prompt \({kind}\) needs at least \d+ tokens, asked for 40$"):
        GENERATORS[TaskKind(kind)](tok, 40, 0)


def test_multivalue_hides_four_values_of_one_key(tok):
    p = multivalue_prompt(tok, 2048, seed=1)
    values = answer_parts(p.answer)
    key = re.search(r"code word (\S+) is", p.text).group(1)
    assert len(set(values)) == 4 and all(p.text.count(v) == 1 for v in values)
    assert p.text.count(f"code word {key} is") == 4 and key in _question(p.text)
    spots = [p.text.index(v) / len(p.text) for v in values]
    assert spots == sorted(spots) and spots[-1] - spots[0] > 0.4  # spread through the prose


def test_multiquery_asks_for_two_of_four(tok):
    p = multiquery_prompt(tok, 2048, seed=2)
    found = dict(re.findall(r"The secret number of the (\w+) is (\d{5})", p.text))
    asked = re.findall(r"secret numbers of the (\w+) and of the (\w+)\?", p.text)[0]
    assert len(found) == 4 and answer_parts(p.answer) == [found[label] for label in asked]
    assert all(p.text.count(v) == 1 for v in found.values())


def test_vartrack_chain_holds_the_value_through_every_hop(tok):
    p = vartrack_prompt(tok, 2048, seed=3)
    names = answer_parts(p.answer)
    value = re.search(r"hold the number (\d{5})\?", p.text).group(1)
    assert len(set(names)) == 5 and p.text.count(value) == 3  # the first statement and the question, twice
    assert f"VAR {names[0]} = {value}." in p.text
    for earlier, later in zip(names, names[1:]):
        hop = f"VAR {later} = VAR {earlier}."
        assert p.text.count(hop) == 1 and p.text.index(hop) > p.text.index(f"VAR {earlier} =")
    assert [p.text.count(n) for n in names] == [2, 2, 2, 2, 1]
    others = set(re.findall(r"VAR ([A-Z]{5}) =", p.text[p.text.index("Keep track"):])) - set(names)
    assert len(others) == 10 and value in _question(p.text)  # two distractor chains of five


def _word_counts(text: str) -> Counter:
    start = text.index("\n\n") + 2
    return Counter(text[start:text.rindex("\n\n")].split())


def test_freqwords_three_words_stand_out(tok):
    for seed in range(3):
        p = freqwords_prompt(tok, 1024, seed=seed)
        counts = _word_counts(p.text)
        top = answer_parts(p.answer)
        assert [w for w, _ in counts.most_common(3)] == top
        assert counts[top[2]] >= 2 * counts.most_common(4)[3][1]
        assert not any(a in b for a in counts for b in top if a != b)  # no word is part of an answer
    with pytest.raises(PromptError, match="too short for its 3 frequent words to stand out"):
        freqwords_prompt(tok, 70, seed=0)


def test_docqa_asks_about_one_record_with_a_unique_answer(tok):
    kinds = set()
    for seed in range(6):
        p = docqa_prompt(tok, 2048, seed=seed)
        town = re.search(r"Question: .*?(?:was|does|mayor of) (\w+)", p.text).group(1)
        record = re.search(rf"Record \d+\. {town} is [^\n]*", p.text).group(0)
        assert p.text.count(f". {town} is a town") == 1 and p.answer in record
        assert p.text.count(p.answer) == 1 and p.text.count("Record ") > 10
        kinds.add(_question(p.text).split("?")[0].split()[1])
    assert len(kinds) == 3  # year, river and mayor questions all occur


def test_multi_answer_scoring_needs_every_answer_in_any_order():
    answer = ANSWER_SEPARATOR.join(["12345", "67890", "ABCDE"])
    assert answer_found(answer, " abcde, 67 890 and 12345.") is True
    assert answer_found(answer, " 67890\n12345 ABCDE") is True
    assert answer_found(answer, " 12345 and 67890") is False
    assert answer_found("Wendle", " the river wendle.") is True
    # single answers score as before
    assert answer_found("12345", " 12 345.") is True and answer_found("12345", " 1234") is False
    assert answer_found(None, "x") is None and answer_parts("12345") == ["12345"]


def test_answer_tokens_cover_every_kind(tok):
    assert answer_tokens(TaskKind.TEXT) == 0 and answer_tokens("passkey") == 10
    for kind in RULER_KINDS:
        p = ruler_prompt(kind, tok, 1024, 0)
        stated = tok.encode(" " + ", ".join(answer_parts(p.answer)) + ".", add_special_tokens=False)
        assert answer_tokens(kind) >= len(stated) + 4, kind
    with pytest.raises(ValueError, match="not a RULER-style task"):
        ruler_prompt(TaskKind.PASSKEY, tok, 1024, 0)


def test_suite_builds_every_task_and_round_trips(tok, tmp_path):
    tasks = ruler_suite(tok, (1024, 1536), seeds=2, seed=10)
    assert len(tasks) == 2 * 2 * len(RULER_KINDS) and len({t.name for t in tasks}) == len(tasks)
    assert {t.seed for t in tasks} == {10, 11, 12, 13} and all(t.prompt.num_tokens == t.length for t in tasks)
    assert [t.kind for t in tasks[:len(RULER_KINDS)]] == list(RULER_KINDS)
    back = load_task_prompts(save_task_prompts(tmp_path / "ruler.json", tasks, {"suite": "ruler"}))
    assert [(t.name, t.kind, t.length, t.seed, t.prompt.input_ids, t.prompt.answer) for t in back] == \
        [(t.name, t.kind, t.length, t.seed, t.prompt.input_ids, t.prompt.answer) for t in tasks]
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        ruler_suite(tok, (1024,), seeds=0)
