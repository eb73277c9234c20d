"""Prompts: bundled ones assembled at run time from real text on every machine, files, passkeys.

Bundled prompts are built from text nobody on this project wrote: the Python standard library's
own source files and docstrings, and the license texts shipped with Python and installed
packages. A tokenizer (anything with ``encode``/``decode``) sizes them to a token count.
"""
from __future__ import annotations

import ast
import hashlib
import random
import sys
import sysconfig
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable


class PromptError(ValueError):
    """A prompt cannot be used; the message is one line naming the problem."""


@dataclass(frozen=True)
class Prompt:
    name: str  # bundled name or file path
    text: str
    input_ids: tuple[int, ...]
    answer: str | None = None  # expected answer, for prompts that have one (passkey)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(" ".join(map(str, self.input_ids)).encode()).hexdigest()

    def preview(self, chars: int = 80) -> str:
        flat = " ".join(self.text.split())
        return flat[:chars] + ("..." if len(flat) > chars else "")


class PromptKind(str, Enum):
    CODE = "code"
    PROSE = "prose"
    MIXED = "mixed"
    LEGAL = "legal"
    PASSKEY = "passkey"


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


# Modules chosen for what they hold; present in every CPython 3.10+.
_CODE_MODULES = ("argparse.py", "json/decoder.py", "json/encoder.py", "textwrap.py", "shlex.py",
                 "tokenize.py", "configparser.py", "dataclasses.py", "functools.py", "enum.py")
_MIXED_MODULES = ("statistics.py", "fractions.py", "heapq.py", "bisect.py", "difflib.py",
                  "decimal.py", "_pydecimal.py")
_PROSE_MODULES = ("difflib.py", "inspect.py", "pathlib.py", "subprocess.py", "typing.py",
                  "unittest/case.py", "logging/__init__.py", "collections/__init__.py",
                  "email/message.py", "http/client.py", "urllib/request.py", "zipfile.py",
                  "tarfile.py", "threading.py", "asyncio/events.py", "argparse.py", "pickle.py")


def _module_paths(preferred: tuple[str, ...]):
    """Preferred modules first, then every other standard-library module (sorted, tests skipped)."""
    root = _stdlib_dir()
    seen = set()
    for name in preferred:
        path = root / name
        if path.is_file():
            seen.add(path)
            yield path
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if path not in seen and not any(p in ("test", "tests", "idle_test", "site-packages") for p in rel):
            yield path


def _gather(preferred: tuple[str, ...], min_chars: int, extract: Callable[[str], list[str]]) -> str:
    parts: list[str] = []
    total = 0
    for path in _module_paths(preferred):
        try:
            chunks = extract(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        parts.extend(chunks)
        total += sum(len(c) for c in chunks)
        if total >= min_chars:
            break
    return "\n\n".join(parts)


def _docstrings(source: str) -> list[str]:
    tree = ast.parse(source)
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = (ast.get_docstring(n) for n in nodes)
    return [d for d in docs if d and len(d.split()) >= 12]


def _without_docstrings(source: str) -> list[str]:
    """Source with module/class/function docstrings cut out: code and comments only."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in [tree, *ast.walk(tree)]:
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            drop.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines = source.splitlines()
    return ["\n".join(line for i, line in enumerate(lines, 1) if i not in drop)]


def code_text(min_chars: int) -> str:
    return _gather(_CODE_MODULES, min_chars, _without_docstrings)


def mixed_text(min_chars: int) -> str:
    return _gather(_MIXED_MODULES, min_chars, lambda src: [src])


def prose_text(min_chars: int) -> str:
    return _gather(_PROSE_MODULES, min_chars, _docstrings)


def _license_files() -> list[Path]:
    files = [_stdlib_dir() / "LICENSE.txt"]
    for site in sorted({p for p in sys.path if p.endswith("site-packages")}):
        for dist in sorted(Path(site).glob("*.dist-info")):
            files.extend(sorted(p for p in dist.rglob("*") if p.is_file() and
                                p.name.upper().startswith(("LICENSE", "COPYING"))))
    return [f for f in files if f.is_file()]


def legal_text(min_chars: int) -> str:
    seen: set[str] = set()
    parts = []
    for path in _license_files():
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text and text not in seen:
            seen.add(text)
            parts.append(text)
        if sum(map(len, parts)) >= min_chars:
            break
    return "\n\n".join(parts)


@dataclass(frozen=True)
class BundledPrompt:
    name: str
    kind: PromptKind
    description: str
    source: Callable[[int], str]  # min_chars -> text


BUNDLED: dict[str, BundledPrompt] = {p.name: p for p in (
    BundledPrompt("stdlib-prose", PromptKind.PROSE, "docstrings of standard-library modules", prose_text),
    BundledPrompt("stdlib-code", PromptKind.CODE, "standard-library source: argparse, json, enum, ...", code_text),
    BundledPrompt("stdlib-mixed", PromptKind.MIXED, "doc-heavy modules: statistics, fractions, difflib, ...",
                  mixed_text),
    BundledPrompt("licenses", PromptKind.LEGAL, "license texts of Python and installed packages", legal_text),
)}
DEFAULT_PROMPT = "stdlib-prose"
PASSKEY_PREFIX = "passkey"


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def bundled_prompt(name: str, tokenizer, tokens: int) -> Prompt:
    """A bundled prompt cut to exactly ``tokens`` tokens (fewer only if the source is shorter)."""
    if name.startswith(PASSKEY_PREFIX):
        return passkey_prompt(tokenizer, tokens, **parse_passkey_name(name))
    if name not in BUNDLED:
        raise PromptError(f"no bundled prompt named {name!r} (see `sharedattn prompts list`)")
    chars = max(2000, tokens * 6)  # about 4 characters a token: a margin for dense code
    ids = _encode(tokenizer, BUNDLED[name].source(chars)[:chars])[:tokens]
    return Prompt(name, tokenizer.decode(ids), tuple(ids))


def parse_passkey_name(name: str) -> dict:
    """``passkey`` or ``passkey:depth=0.25,seed=3``."""
    _, _, args = name.partition(":")
    out: dict = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        try:
            if key == "depth":
                out["depth"] = float(value)
            elif key == "seed":
                out["seed"] = int(value)
            else:
                raise ValueError
        except ValueError:
            raise PromptError(f"passkey prompt {name!r}: use passkey:depth=0.5,seed=0") from None
    if not 0.0 <= out.get("depth", 0.5) <= 1.0:
        raise PromptError(f"passkey prompt {name!r}: depth must be between 0 and 1")
    return out


def passkey_prompt(tokenizer, tokens: int, depth: float = 0.5, seed: int = 0) -> Prompt:
    """A haystack of real prose with a 5-digit pass key hidden at ``depth`` and the question last."""
    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    intro = _encode(tokenizer, "Below is a long text. Somewhere in it a pass key is hidden. "
                               "Find it and remember it.\n\n")
    needle = _encode(tokenizer, f"\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n")
    question = _encode(tokenizer, "\n\nWhat is the pass key? The pass key is")
    room = tokens - len(intro) - len(needle) - len(question)
    if room < 0:
        raise PromptError(f"a passkey prompt needs at least {tokens - room} tokens, asked for {tokens}")
    paragraphs = prose_text(room * 6).split("\n\n")
    rng.shuffle(paragraphs)
    hay = _encode(tokenizer, "\n\n".join(paragraphs))[:room]
    cut = round(depth * len(hay))
    ids = intro + hay[:cut] + needle + hay[cut:] + question
    name = f"{PASSKEY_PREFIX}:depth={depth:g},seed={seed}"
    return Prompt(name, tokenizer.decode(ids), tuple(ids), answer=key)


def read_prompt_file(path: Path) -> str:
    """Read a prompt file, rejecting what is not usable text with one clear line."""
    if not path.exists():
        raise PromptError(f"prompt file {str(path)!r} does not exist")
    if path.is_dir():
        raise PromptError(f"prompt {str(path)!r} is a folder, not a text file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptError(f"prompt file {str(path)!r} cannot be read ({exc.strerror})") from None
    if b"\x00" in data:
        raise PromptError(f"prompt file {str(path)!r} is binary (it holds NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"prompt file {str(path)!r} is not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise PromptError(f"prompt file {str(path)!r} is empty")
    return text


def is_prompt_name(spec: str) -> bool:
    return spec in BUNDLED or spec == PASSKEY_PREFIX or spec.startswith(PASSKEY_PREFIX + ":")


def resolve_prompt(spec: str | None, tokenizer, *, tokens: int, max_tokens: int,
                   truncate: bool = False) -> Prompt:
    """A file path or a bundled prompt name (default: the default bundled prompt).

    ``tokens`` sizes bundled prompts; ``max_tokens`` is the model's context: a longer file is an
    error naming both lengths unless ``truncate`` is set.
    """
    spec = spec or DEFAULT_PROMPT
    if tokens < 1:
        raise PromptError(f"--tokens must be positive, got {tokens}")
    if is_prompt_name(spec) and not Path(spec).exists():
        if tokens > max_tokens:
            raise PromptError(f"--tokens {tokens} is longer than the model's context of {max_tokens} tokens")
        return bundled_prompt(spec, tokenizer, tokens)
    path = Path(spec)
    if not path.exists() and not path.suffix and "/" not in spec:
        raise PromptError(f"prompt {spec!r}: no such file and no bundled prompt of that name "
                          "(see `sharedattn prompts list`)")
    text = read_prompt_file(path)
    ids = _encode(tokenizer, text)
    if not ids:
        raise PromptError(f"prompt file {spec!r} gives no tokens")
    if len(ids) > max_tokens:
        if not truncate:
            raise PromptError(f"prompt {spec!r} has {len(ids)} tokens, longer than the model's context "
                              f"of {max_tokens} (use --truncate to keep the first {max_tokens})")
        ids = ids[:max_tokens]
        text = tokenizer.decode(ids)
    return Prompt(str(spec), text, tuple(ids))
