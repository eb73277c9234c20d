"""Generate docs/cli.md from the Typer app: `python -m sharedattn_cli.docs_gen > docs/cli.md`.

A test regenerates the page and compares it with the committed file, so the docs cannot drift.
"""
from __future__ import annotations

import inspect

import typer

# Typer may bundle its own copy of click, so commands are recognised by what they have, not by class.


def _param_row(param, ctx) -> str:
    if param.param_type_name == "argument":
        name = (param.metavar or param.name).upper()
        return f"| `{name}`{'...' if param.nargs == -1 else ''} | argument | {_help(param)} |"
    opts = ", ".join(f"`{o}`" for o in param.opts + param.secondary_opts)
    default = ""
    if not getattr(param, "is_flag", False) and param.default not in (None, (), []) and not callable(param.default):
        value = getattr(param.default, "value", param.default)  # enums show their value
        default = f" (default: `{value}`)"
    kind = "flag" if getattr(param, "is_flag", False) else param.display_type(ctx).strip("<>").replace("|", " \\| ")
    return f"| {opts} | {kind} | {_help(param)}{default} |"


def _help(param) -> str:
    return " ".join((getattr(param, "help", None) or "").split()).replace("|", "\\|")


def _command_section(path: str, command, ctx) -> list[str]:
    lines = [f"## `{path}`", ""]
    doc = inspect.cleandoc(command.help or "")
    if doc:
        lines += [doc, ""]
    params = [p for p in command.params if p.name != "help"]
    if params:
        lines += ["| parameter | type | meaning |", "|---|---|---|"]
        lines += [_param_row(p, ctx) for p in params]
        lines.append("")
    return lines


def _walk(prefix: str, command):
    ctx = command.context_class(command, info_name=prefix)
    if hasattr(command, "list_commands"):
        if command.params:
            yield prefix, command, ctx
        for name in command.list_commands(ctx):
            yield from _walk(f"{prefix} {name}", command.get_command(ctx, name))
    else:
        yield prefix, command, ctx


def render(app: typer.Typer) -> str:
    root = typer.main.get_command(app)
    lines = ["# Command-line reference", "",
             "Generated from the app by `python -m sharedattn_cli.docs_gen > docs/cli.md`; a test keeps it "
             "in step. Every command exits 2 with one line on known errors (`--debug` for a traceback).", ""]
    for path, command, ctx in _walk("sharedattn", root):
        lines += _command_section(path, command, ctx)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    from .app import app

    print(render(app), end="")
