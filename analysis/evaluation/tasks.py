"""Prompts with something to score: real text (log-likelihood), passkey grids, multi-key needles.

Every generator takes a fixed seed, so the same arguments give the same token ids on every
machine with the same standard library and tokenizer; ``save_task_prompts`` writes the exact ids
beside the results and ``load_task_prompts`` reads them back, so a run can be repeated exactly.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ...kernels.limits import ConfigError
from ..files.atomic import write_text_atomic
from ..files.prompts import Prompt, PromptError, bundled_prompt, passkey_prompt, prose_text

PROMPT_SET_KIND = "sharedattn.compare.prompts"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
_LABELS = ("red", "blue", "green", "yellow", "violet", "orange", "silver", "golden", "black", "white")
MAX_NEEDLES = len(_LABELS)  # keys of a multi-key prompt: each has its own colour


class TaskKind(str, Enum):
    TEXT = "text"  # real text: scored by mean token log-likelihood against dense
    PASSKEY = "passkey"  # one 5-digit key in a haystack: exact match of the greedy answer
    MULTIKEY = "multikey"  # several labelled keys; the question asks for one of them
    # long-context tasks in the style of RULER (analysis/evaluation/ruler.py); exact-match scored
    MULTIVALUE = "ruler-mv"  # one code word with several numbers; the question asks for all of them
    MULTIQUERY = "ruler-mq"  # several labelled numbers; the question asks for two of them
    VARTRACK = "ruler-vt"  # chained variable assignments; the question asks which variables hold a number
    FREQWORDS = "ruler-fwe"  # a long word list; the question asks for its three most frequent words
    DOCQA = "ruler-qa"  # many generated records; one question about one of them


# Greedy tokens each kind needs to state its answer, with room for a restated question or list
# punctuation (5-digit numbers are 5-6 tokens on SmolLM2 and Qwen2: one a digit).
_ANSWER_TOKENS = {TaskKind.TEXT: 0, TaskKind.PASSKEY: 10, TaskKind.MULTIKEY: 10, TaskKind.MULTIVALUE: 40,
                  TaskKind.MULTIQUERY: 32, TaskKind.VARTRACK: 48, TaskKind.FREQWORDS: 24, TaskKind.DOCQA: 16}
ANSWER_SEPARATOR = "|"  # joins the answers of a multi-answer task; never part of an answer


def answer_tokens(kind: TaskKind) -> int:
    """How many greedy tokens after the prompt a task of ``kind`` needs (0: nothing to generate)."""
    return _ANSWER_TOKENS[TaskKind(kind)]


@dataclass(frozen=True)
class TaskPrompt:
    prompt: Prompt
    kind: TaskKind
    length: int  # requested length in tokens (the grid's row)
    depth: float | None = None  # needle depth in [0, 1] (the grid's column), None for text
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.prompt.name

    def to_json(self, with_text: bool = True) -> dict:
        out = {"name": self.name, "kind": self.kind.value, "length": self.length, "depth": self.depth,
               "seed": self.seed, "num_tokens": self.prompt.num_tokens, "sha256": self.prompt.sha256,
               "answer": self.prompt.answer}
        if with_text:
            out["text"] = self.prompt.text
            out["input_ids"] = list(self.prompt.input_ids)
        return out


@dataclass(frozen=True)
class PasskeyGrid:
    """Lengths x depths of passkey prompts; cell i uses seed ``seed + i``."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    seed: int = 0
    needles: int = 0  # > 1 adds a multi-key variant per length (at the middle depth)

    def __post_init__(self):
        if any(n < 64 for n in self.lengths):
            raise ConfigError(f"passkey lengths must be at least 64 tokens, got {list(self.lengths)}")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ConfigError(f"passkey depths must be between 0 and 1, got {list(self.depths)}")
        if self.needles == 1 or not 0 <= self.needles <= MAX_NEEDLES:
            raise ConfigError(f"needles must be 0 (off) or 2..{MAX_NEEDLES}, got {self.needles}")

    def to_json(self) -> dict:
        return {"lengths": list(self.lengths), "depths": list(self.depths), "seed": self.seed,
                "needles": self.needles}


def text_prompts(tokenizer, names: list[str], tokens: int) -> list[TaskPrompt]:
    """Bundled real-text prompts, each cut to ``tokens`` tokens."""
    return [TaskPrompt(bundled_prompt(n, tokenizer, tokens), TaskKind.TEXT, tokens) for n in names]


def passkey_grid(tokenizer, grid: PasskeyGrid) -> list[TaskPrompt]:
    """One passkey prompt per (length, depth), then the multi-key variants (if asked)."""
    out, index = [], 0
    for length in grid.lengths:
        for depth in grid.depths:
            seed = grid.seed + index
            out.append(TaskPrompt(passkey_prompt(tokenizer, length, depth, seed), TaskKind.PASSKEY,
                                  length, depth, seed))
            index += 1
    if grid.needles:
        for length in grid.lengths:
            seed = grid.seed + index
            out.append(TaskPrompt(multikey_prompt(tokenizer, length, grid.needles, seed),
                                  TaskKind.MULTIKEY, length, 0.5, seed))
            index += 1
    return out


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def multikey_prompt(tokenizer, tokens: int, needles: int = 4, seed: int = 0) -> Prompt:
    """``needles`` labelled 5-digit keys spread evenly through real prose; the question asks for
    one label chosen by the seed, so the others act as distractors."""
    rng = random.Random(seed)
    labels = rng.sample(_LABELS, needles)
    keys = rng.sample(range(10000, 100000), needles)
    target = rng.randrange(needles)
    intro = _encode(tokenizer, "Below is a long text. Several pass keys, each with a colour, are hidden "
                               "in it. Find them and remember them.\n\n")
    marks = [_encode(tokenizer, f"\n\nThe {label} pass key is {key}. Remember it. {key} is the {label} "
                                f"pass key.\n\n") for label, key in zip(labels, keys)]
    question = _encode(tokenizer, f"\n\nWhat is the {labels[target]} pass key? The {labels[target]} pass key is")
    room = tokens - len(intro) - sum(map(len, marks)) - len(question)
    if room < 0:
        raise PromptError(f"a {needles}-key prompt needs at least {tokens - room} tokens, asked for {tokens}")
    paragraphs = prose_text(room * 6).split("\n\n")
    rng.shuffle(paragraphs)
    hay = _encode(tokenizer, "\n\n".join(paragraphs))[:room]
    cuts = [round(len(hay) * (i + 1) / (needles + 1)) for i in range(needles)]
    ids, last = list(intro), 0
    for cut, mark in zip(cuts, marks):
        ids += hay[last:cut] + mark
        last = cut
    ids += hay[last:] + question
    name = f"multikey:needles={needles},seed={seed}"
    return Prompt(name, tokenizer.decode(ids), tuple(ids), answer=str(keys[target]))


def answer_parts(answer: str) -> list[str]:
    """The answers a prompt expects: ``"a|b|c"`` -> ``["a", "b", "c"]``; a single answer -> ``[answer]``."""
    return answer.split(ANSWER_SEPARATOR)


def answer_found(answer: str | None, continuation: str) -> bool | None:
    """Exact match: every answer of ``answer`` (see ``answer_parts``) appears in the greedy
    continuation, in any order, ignoring whitespace and case (None: nothing to score)."""
    if answer is None:
        return None
    flat = "".join(continuation.split()).casefold()
    return all("".join(part.split()).casefold() in flat for part in answer_parts(answer))


def mean_loglik(logits: torch.Tensor, input_ids) -> float:
    """Mean log-likelihood of the prompt's own next tokens over the last ``P`` positions.

    ``logits`` is ``[P, V]`` for positions ``N-P .. N-1``; the last position predicts a token the
    prompt does not contain, so ``P-1`` tokens are scored.
    """
    p = logits.shape[0]
    if p < 2:
        return float("nan")
    targets = torch.tensor(list(input_ids)[-(p - 1):], dtype=torch.long)  # [P-1]
    logp = logits[:-1].float().log_softmax(-1)  # [P-1, V]
    return float(logp.gather(1, targets[:, None]).mean())


# ---- saving and loading the exact prompts of a run ---------------------------------------------

def save_task_prompts(path: Path, prompts: list[TaskPrompt], meta: dict) -> Path:
    """Write the prompts (text and token ids) as one JSON document, atomically."""
    doc = {"kind": PROMPT_SET_KIND, "schema_version": 1, **meta,
           "prompts": [p.to_json() for p in prompts]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(doc) + "\n")
    return path


def is_task_prompt_file(path: Path) -> bool:
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        with path.open(encoding="utf-8") as fh:
            head = fh.read(200)
    except (OSError, UnicodeDecodeError):
        return False
    return PROMPT_SET_KIND in head


def load_task_prompts(path: Path) -> list[TaskPrompt]:
    """Read a prompt set written by ``save_task_prompts``; ``PromptError`` names a bad entry."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        items = doc["prompts"]
        return [_task_from_json(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PromptError(f"prompt set {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None


def _task_from_json(item: dict) -> TaskPrompt:
    ids = tuple(int(i) for i in item["input_ids"])
    prompt = Prompt(item["name"], item["text"], ids, item.get("answer"))
    return TaskPrompt(prompt, TaskKind(item["kind"]), int(item["length"]), item.get("depth"), item.get("seed"))
