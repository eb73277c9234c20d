"""Long-context tasks in the style of the RULER benchmark, each scored by exact match.

Five generators, each ``(tokenizer, tokens, seed) -> Prompt`` of exactly ``tokens`` tokens whose
``answer`` holds every expected answer joined by ``ANSWER_SEPARATOR`` (``answer_found`` wants all):

- ``multivalue_prompt``: one code word with four numbers hidden at spread depths in real prose;
  the question asks for all four.
- ``multiquery_prompt``: four labelled numbers in real prose; the question asks for two of them.
- ``vartrack_prompt``: a number assigned to a variable, then passed on through a chain of four
  assignments spread through the prose, among two distractor chains; the question asks which
  variables hold the number (all five names).
- ``freqwords_prompt``: a long list of words where three occur far more often than the rest; the
  question asks for those three.
- ``docqa_prompt``: many short generated records about fictional towns; one question about one.

The same seed gives the same token ids on every machine with the same standard library and
tokenizer. ``ruler_suite`` builds every task at every length.
"""
from __future__ import annotations

import random
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Callable

from ..files.prompts import Prompt, PromptError, prose_text
from .tasks import ANSWER_SEPARATOR, TaskKind, TaskPrompt

_VALUES = 4  # numbers of the multi-value code word
_QUERIES, _LABELLED = 2, 4  # multi-query: numbers asked for, numbers hidden
_HOPS, _CHAINS = 4, 3  # variable tracking: assignments after the first, chains (one asked for)
_TOP_WORDS, _FILLER_WORDS = 3, 200  # frequent-word extraction: frequent words, other words
_TOP_SHARE = (0.12, 0.08, 0.05)  # share of the list's slots each frequent word fills
_STAND_OUT = 2  # the third frequent word occurs at least this many times as often as any other

_ADJECTIVES = ("amber", "quiet", "frozen", "hollow", "crimson", "gentle", "rusty", "distant",
               "bitter", "silent", "narrow", "golden")
_NOUNS = ("falcon", "harbour", "lantern", "meadow", "anvil", "orchard", "glacier", "beacon",
          "thistle", "quarry", "compass", "kettle")
_OBJECTS = ("lighthouse", "violin", "teapot", "windmill", "saddle", "telescope", "hammock",
            "chessboard", "umbrella", "typewriter")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


_TITLES = {"mv": "multi-value", "mq": "multi-query", "vt": "variable-tracking", "fwe": "frequent-word",
           "qa": "record-question"}  # short task name -> the words its errors use


def _room(tokens: int, fixed: int, what: str) -> int:
    """Tokens left for the haystack after the fixed parts; one clear line when there are none."""
    room = tokens - fixed
    if room < 0:
        raise PromptError(f"a {_TITLES[what]} prompt (ruler-{what}) needs at least {fixed} tokens, "
                          f"asked for {tokens}")
    return room


def _prose(tokenizer, rng: random.Random, room: int) -> list[int]:
    """``room`` tokens of real prose, paragraphs in a seeded order."""
    paragraphs = prose_text(room * 6).split("\n\n")
    rng.shuffle(paragraphs)
    return _encode(tokenizer, "\n\n".join(paragraphs))[:room]


def _spread(rng: random.Random, count: int) -> list[float]:
    """``count`` increasing depths in (0, 1), one in each of ``count`` equal slices."""
    return [(i + rng.uniform(0.15, 0.85)) / count for i in range(count)]


def _hide(intro: list[int], hay: list[int], marks: list[list[int]], depths: list[float],
          question: list[int]) -> list[int]:
    """``intro``, then ``hay`` with each mark inserted at its (increasing) depth, then ``question``."""
    ids, last = list(intro), 0
    for depth, mark in zip(depths, marks):
        cut = max(last, round(depth * len(hay)))
        ids += hay[last:cut] + mark
        last = cut
    return ids + hay[last:] + question


def _rng(kind: str, seed: int) -> random.Random:
    """The generator of one task's prompt: seeded by the prompt's name, so tasks sharing a seed
    draw different numbers (a string seed is hashed the same way on every machine)."""
    return random.Random(f"ruler-{kind}:seed={seed}")


def _numbers(rng: random.Random, count: int) -> list[str]:
    return [str(n) for n in rng.sample(range(10000, 100000), count)]


def _needle_prompt(tokenizer, tokens: int, seed: int, what: str, rng: random.Random,
                   texts: tuple[str, list[str], str]) -> tuple[list[int], str]:
    """Real prose holding the needle texts at spread depths, between an intro and a question."""
    intro, needles, question = texts
    intro_ids, question_ids = _encode(tokenizer, intro), _encode(tokenizer, question)
    marks = [_encode(tokenizer, text) for text in needles]
    room = _room(tokens, len(intro_ids) + sum(map(len, marks)) + len(question_ids), what)
    hay = _prose(tokenizer, rng, room)
    return _hide(intro_ids, hay, marks, _spread(rng, len(marks)), question_ids), f"ruler-{what}:seed={seed}"


def _prompt(tokenizer, name: str, ids: list[int], answers: list[str]) -> Prompt:
    assert not any(ANSWER_SEPARATOR in a or not a.strip() for a in answers), answers
    return Prompt(name, tokenizer.decode(ids), tuple(ids), answer=ANSWER_SEPARATOR.join(answers))


# ---- needles in prose ---------------------------------------------------------------------------

def multivalue_prompt(tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """One code word with four numbers at spread depths in real prose; the answer is all four."""
    rng = _rng("mv", seed)
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    values = _numbers(rng, _VALUES)
    texts = ("Several numbers that belong to one code word are scattered through the long text below. "
             "Note each of them.\n\n",
             [f"\n\nOne of the numbers that belong to the code word {key} is {v}.\n\n" for v in values],
             f"\n\nWhat are all the numbers that belong to the code word {key}? There are {_VALUES} of "
             f"them. The numbers for {key} are")
    ids, name = _needle_prompt(tokenizer, tokens, seed, "mv", rng, texts)
    return _prompt(tokenizer, name, ids, values)


def multiquery_prompt(tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """Four labelled numbers in real prose; the question asks for two of them (the other two are
    distractors); the answer is the two asked for."""
    rng = _rng("mq", seed)
    labels = rng.sample(_OBJECTS, _LABELLED)
    values = _numbers(rng, _LABELLED)
    asked = sorted(rng.sample(range(_LABELLED), _QUERIES))
    a, b = (labels[i] for i in asked)
    texts = ("The long text below hides a secret number for each of several objects. Note them.\n\n",
             [f"\n\nThe secret number of the {label} is {value}.\n\n" for label, value in zip(labels, values)],
             f"\n\nWhat are the secret numbers of the {a} and of the {b}? Answer with both numbers. "
             f"The secret number of the {a} is")
    ids, name = _needle_prompt(tokenizer, tokens, seed, "mq", rng, texts)
    return _prompt(tokenizer, name, ids, [values[i] for i in asked])


def _variable_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names and name != "OTHER":  # OTHER: the intro's example
            names.append(name)
    return names


def _chain_statements(rng: random.Random) -> tuple[list[str], list[str], str]:
    """The statements of every chain, interleaved in a seeded order that keeps each chain's own
    order; the asked chain's variable names and its number."""
    names = _variable_names(rng, _CHAINS * (_HOPS + 1))
    values = _numbers(rng, _CHAINS)
    chains = []
    for c in range(_CHAINS):
        own = names[c * (_HOPS + 1):(c + 1) * (_HOPS + 1)]
        chains.append([f"VAR {own[0]} = {values[c]}"] +
                      [f"VAR {own[h]} = VAR {own[h - 1]}" for h in range(1, _HOPS + 1)])
    order = [c for c in range(_CHAINS) for _ in range(_HOPS + 1)]
    rng.shuffle(order)
    statements = [chains[c].pop(0) for c in order]
    return statements, names[:_HOPS + 1], values[0]


def vartrack_prompt(tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """A number passed along a chain of assignments spread through real prose, with distractor
    chains of other numbers; the answer is every variable of the asked chain."""
    rng = _rng("vt", seed)
    statements, chain, value = _chain_statements(rng)
    texts = ("The long text below contains assignments such as VAR NAME = 12345, which gives the "
             "variable NAME the number 12345, and VAR OTHER = VAR NAME, which gives OTHER the number "
             "NAME holds. Keep track of them.\n\n",
             [f"\n\n{s}.\n\n" for s in statements],
             f"\n\nFollow every assignment: which variables hold the number {value}? List all "
             f"{_HOPS + 1} of them. The variables that hold {value} are")
    ids, name = _needle_prompt(tokenizer, tokens, seed, "vt", rng, texts)
    return _prompt(tokenizer, name, ids, chain)


# ---- most frequent words ------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _word_pool() -> tuple[str, ...]:
    """Distinct lower-case words of 5-10 letters from the standard library's docstrings."""
    return tuple(sorted(set(re.findall(r"\b[a-z]{5,10}\b", prose_text(200_000)))))


def _vocabulary(rng: random.Random, count: int, avoid: str) -> list[str]:
    """``count`` words of the pool, none a part of another (so finding one never finds another) nor
    of ``avoid`` (the prompt's own wording)."""
    pool = [word for word in _word_pool() if word not in avoid]
    rng.shuffle(pool)
    chosen: list[str] = []
    for word in pool:
        if not any(word in other or other in word for other in chosen):
            chosen.append(word)
            if len(chosen) == count:
                return chosen
    raise PromptError(f"the standard library's docstrings give fewer than {count} distinct words")


def _word_list(rng: random.Random, top: list[str], fillers: list[str], count: int) -> list[str]:
    """``count`` words: each slot a frequent word with its share, else the next word of a
    reshuffled deck of the fillers (so every filler occurs about equally often)."""
    words, deck = [], []
    for _ in range(count):
        pick = rng.random()
        for word, share in zip(top, _TOP_SHARE):
            if pick < share:
                words.append(word)
                break
            pick -= share
        else:
            if not deck:
                deck = rng.sample(fillers, len(fillers))
            words.append(deck.pop())
    return words


def freqwords_prompt(tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """A long list of words where three occur far more often than any other; the answer is those
    three, most frequent first."""
    rng = _rng("fwe", seed)
    intro_text = "Below is a long list of words. A few of them occur much more often than the others.\n\n"
    question_text = (f"\n\nWhich {_TOP_WORDS} words occur most often in the list above? "
                     f"The {_TOP_WORDS} most frequent words are")
    vocab = _vocabulary(rng, _TOP_WORDS + _FILLER_WORDS, (intro_text + question_text).lower())
    top, fillers = vocab[:_TOP_WORDS], vocab[_TOP_WORDS:]
    intro, question = _encode(tokenizer, intro_text), _encode(tokenizer, question_text)
    room = _room(tokens, len(intro) + len(question), "fwe")
    hay = _encode(tokenizer, " ".join(_word_list(rng, top, fillers, room)))[:room]
    if len(hay) < room:  # a word with its space is at least one token in any subword tokenizer
        raise PromptError(f"a frequent-word prompt of {tokens} tokens: {room} words gave only {len(hay)} tokens")
    counts = Counter(tokenizer.decode(hay).split())
    ranked = sorted(top, key=lambda w: -counts[w])
    others = max((n for w, n in counts.items() if w not in top), default=0)
    if counts[ranked[-1]] < max(_STAND_OUT * others, 3):
        raise PromptError(f"a frequent-word prompt (ruler-fwe) of {tokens} tokens is too short for its "
                          f"{_TOP_WORDS} frequent words to stand out ({counts[ranked[-1]]} against {others})")
    ids = intro + hay + question
    return _prompt(tokenizer, f"ruler-fwe:seed={seed}", ids, ranked)


# ---- question answering over generated records --------------------------------------------------

_TOWN_HEADS = ("Ash", "Bram", "Cal", "Dun", "Elm", "Fen", "Gar", "Hol", "Ivy", "Jor", "Kel", "Lum",
               "Mar", "Nor", "Oak", "Pel", "Quen", "Ros", "Sel", "Tam", "Ul", "Ven", "Wil", "Yar",
               "Zel", "Brom", "Crag", "Dray", "Eld", "Frid", "Gorse", "Hask", "Irn", "Kip", "Lorn",
               "Mossy", "Nettle", "Orm", "Pike", "Rush", "Stan", "Thorn", "Umber", "Vale", "Wren", "Yew")
_TOWN_TAILS = ("bury", "ford", "ham", "ley", "mouth", "stead", "ton", "wick", "worth", "field",
               "gate", "haven", "holm", "combe", "dale", "more", "port", "shaw", "thorpe", "well",
               "wood", "by", "cliff", "marsh")
_RIVERS = ("Adderbeck", "Brillwater", "Corran", "Dwyle", "Eskmere", "Fallowmere", "Greave", "Hurnock",
           "Kestle", "Loddon", "Mardle", "Orrin", "Quillon", "Rothwyn", "Tarrow", "Vyrne", "Wendle",
           "Yarrow", "Zennor", "Glasney")
_FIRST_NAMES = ("Ada", "Bruno", "Clara", "Dmitri", "Edith", "Farid", "Greta", "Hugo", "Ines", "Jonas",
                "Kaia", "Luis", "Mina", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tove", "Umar")
_SURNAMES = ("Abernathy", "Blackwood", "Castellan", "Dunstable", "Everly", "Fairbrook", "Gallowan",
             "Hartigan", "Ingleby", "Jessop", "Kilbride", "Lockhart", "Merriweather", "Northcott",
             "Ollerton", "Pennington", "Quarrie", "Ravensworth", "Stainforth", "Thackeray", "Underhill",
             "Vickery", "Whitlock", "Yardley")
_YEARS = tuple(str(year) for year in range(1100, 1900))
_TRADES = ("wool", "pottery", "cider", "salt", "timber", "cheese", "rope", "glass", "lace", "copper",
           "barley", "clocks", "candles", "slate", "honey", "leather")
# The attribute a question asks about -> (question, answer lead-in); {town} is filled in.
_QUESTIONS = {"year": ("In which year was {town} founded?", "{town} was founded in"),
              "river": ("On which river does {town} lie?", "{town} lies on the river"),
              "mayor": ("What is the surname of the mayor of {town}?", "The mayor of {town} is")}


def _towns() -> list[str]:
    return sorted({head + tail for head in _TOWN_HEADS for tail in _TOWN_TAILS})


def _record(rng: random.Random, town: str, avoid: dict[str, str]) -> dict[str, str]:
    """One town's facts; none equal to the asked record's (``avoid``), so its answer is unique."""
    def pick(options, key):
        while (choice := rng.choice(options)) == avoid.get(key):
            pass
        return choice
    return {"town": town, "year": pick(_YEARS, "year"),
            "river": pick(_RIVERS, "river"), "mayor": pick(_SURNAMES, "mayor"),
            "first": rng.choice(_FIRST_NAMES), "trade": rng.choice(_TRADES),
            "people": str(rng.randrange(800, 90000))}


def _record_text(number: int, r: dict[str, str]) -> str:
    return (f"Record {number}. {r['town']} is a town on the river {r['river']}, founded in {r['year']}. "
            f"About {r['people']} people live there. Its mayor is {r['first']} {r['mayor']}, and it is "
            f"known for its {r['trade']}.\n\n")


def _next_record(others, tokens: int, towns: int) -> dict[str, str]:
    record = next(others, None)
    if record is None:
        raise PromptError(f"a record-question prompt (ruler-qa) of {tokens} tokens needs more than the "
                          f"{towns} generated towns")
    return record


def docqa_prompt(tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """Many short generated records about fictional towns and one question about one of them; the
    answer (a year, a river or a surname) occurs in no other record."""
    rng = _rng("qa", seed)
    towns = _towns()
    rng.shuffle(towns)
    asked = _record(rng, towns[0], {})
    attribute = rng.choice(sorted(_QUESTIONS))
    question_text, lead = (t.format(town=asked["town"]) for t in _QUESTIONS[attribute])
    intro = _encode(tokenizer, "Below are records about fictional towns. Answer the question at the end "
                               "from these records.\n\n")
    question = _encode(tokenizer, f"\nQuestion: {question_text}\nAnswer: {lead}")
    sizes = [len(_encode(tokenizer, _record_text(1, asked)))]
    _room(tokens, len(intro) + len(question) + sizes[0], "qa")
    need = tokens - len(intro) - len(question)
    others = (_record(rng, town, asked) for town in towns[1:])
    records = [asked]
    while sum(sizes) < need:
        records.append(_next_record(others, tokens, len(towns)))
        sizes.append(len(_encode(tokenizer, _record_text(len(records), records[-1]))))
    where = rng.randrange(len(records) - 1) if len(records) > 1 else 0  # the last record may be cut
    records.insert(where, records.pop(0))
    body = [t for i, r in enumerate(records, 1) for t in _encode(tokenizer, _record_text(i, r))]
    while len(body) < need:  # numbering moved: records after the asked one keep it whole
        records.append(_next_record(others, tokens, len(towns)))
        body += _encode(tokenizer, _record_text(len(records), records[-1]))
    ids = intro + body[:need] + question
    return _prompt(tokenizer, f"ruler-qa:seed={seed}", ids, [asked[attribute]])


# ---- every task ---------------------------------------------------------------------------------

GENERATORS: dict[TaskKind, Callable[..., Prompt]] = {
    TaskKind.MULTIVALUE: multivalue_prompt, TaskKind.MULTIQUERY: multiquery_prompt,
    TaskKind.VARTRACK: vartrack_prompt, TaskKind.FREQWORDS: freqwords_prompt, TaskKind.DOCQA: docqa_prompt}
RULER_KINDS = tuple(GENERATORS)


def ruler_prompt(kind: TaskKind | str, tokenizer, tokens: int, seed: int = 0) -> Prompt:
    """The prompt of one RULER-style task kind (``ValueError`` for a kind that is not one)."""
    make = GENERATORS.get(kind)
    if make is None:
        choices = ", ".join(k.value for k in RULER_KINDS)
        raise ValueError(f"{getattr(kind, 'value', kind)!r} is not a RULER-style task (choose from {choices})")
    return make(tokenizer, tokens, seed)


def ruler_suite(tokenizer, lengths, seeds: int = 1, seed: int = 0,
                kinds: tuple[TaskKind, ...] = RULER_KINDS) -> list[TaskPrompt]:
    """Every task kind at every length, ``seeds`` prompts of each. Like the passkey grid, cell i
    (lengths in order, then the repeats of a length) uses seed ``seed + i``, so no two prompts of
    one kind share a name; ``PromptError`` when a length is too short for a task."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    out, index = [], 0
    for length in lengths:
        for _ in range(seeds):
            cell = seed + index
            out += [TaskPrompt(ruler_prompt(kind, tokenizer, length, cell), TaskKind(kind), length, None, cell)
                    for kind in kinds]
            index += 1
    return out
