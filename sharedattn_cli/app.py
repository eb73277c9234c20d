"""Top-level Typer application; each command lives in its own module and registers itself here."""
from __future__ import annotations

import importlib
from typing import Annotated

import typer

from .common import set_debug

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="sharedattn: see, measure and exploit shared sparse attention patterns (SharePrefill).")

# Command modules, in the order they appear in --help. Each exports register(app).
_COMMAND_MODULES = ("capture", "prompts_cmd", "models_cmd", "similarity", "cluster", "lookup_cmd", "heatmap",
                    "report", "prefill", "compare", "matched", "bench")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for known errors.")] = False) -> None:
    set_debug(debug)


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sharedattn_cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sharedattn_cli.{name}":
                continue  # command not built yet
            raise
        if hasattr(module, "register"):
            module.register(app)
        elif hasattr(module, "bench_app"):
            from . import bench_capture, bench_prefill

            bench_capture.register_into(module.bench_app)
            bench_prefill.register_into(module.bench_app)
            app.add_typer(module.bench_app, name="bench")


_register_all()


def main() -> None:
    app()
