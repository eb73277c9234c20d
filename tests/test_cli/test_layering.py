"""The folders show the architecture: every module imports, and imports only point downwards.

Layers of `sharedattn.analysis` (docs/architecture.md): `files` and `method` import nothing else of
the library but `sharedattn.kernels`; `offline` builds on them; `hf` (the only transformers user)
on those three; `evaluation` on everything but `plots`; `plots` on everything but `hf`. The kernels
import nothing of the analysis, and the library nothing of the CLI.
"""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "files": set(),
    "method": set(),
    "offline": {"method", "files"},
    "hf": {"method", "files", "offline"},
    "evaluation": {"method", "files", "offline", "hf"},
    "plots": {"method", "files", "offline", "evaluation"},
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for folder, package in (("kernels", "sharedattn.kernels"), ("analysis", "sharedattn.analysis")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.append((".".join([package, *parts]), path))
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["sharedattn", "analysis"] and len(parts) > 2:
        return parts[2]
    return None


def test_every_analysis_module_sits_in_a_layer():
    stray = [m for m, _ in _modules() if m.startswith("sharedattn.analysis.") and _layer(m) not in ALLOWED]
    assert stray == []


@pytest.mark.parametrize("name,path", _modules(), ids=[m for m, _ in _modules()])
def test_module_imports_and_points_downwards(name, path):
    importlib.import_module(name)
    imported = _imports(name, path)
    assert not any(i.startswith("sharedattn_cli") for i in imported), "the library imports the CLI"
    if name.startswith("sharedattn.kernels"):
        assert not any(i.startswith("sharedattn.analysis") for i in imported)
        return
    own = _layer(name)
    if own is None:
        return
    used = {_layer(i) for i in imported if _layer(i) in ALLOWED} - {own}
    assert used <= ALLOWED[own], f"{name} imports layers {sorted(used - ALLOWED[own])}"
