"""`sharedattn prompts list|show`: the bundled prompts and the passkey generator."""
from __future__ import annotations

from typing import Annotated

import typer

from .common import DEFAULT_TOKENS, ModelChoice, cli_command, console
from .options import JsonOpt, ModelOpt, TokensOpt

prompts_app = typer.Typer(help="List and show the bundled prompts.", no_args_is_help=True)


@prompts_app.command("list")
@cli_command
def list_prompts(json_out: JsonOpt = False) -> None:
    """List the bundled prompts (real text from the Python standard library and license files)."""
    from sharedattn.analysis.files.prompts import BUNDLED, DEFAULT_PROMPT, PASSKEY_PREFIX

    rows = [{"name": p.name, "kind": p.kind.value, "description": p.description,
             "default": p.name == DEFAULT_PROMPT} for p in BUNDLED.values()]
    rows.append({"name": f"{PASSKEY_PREFIX}[:depth=D,seed=S]", "kind": "passkey",
                 "description": "pass key hidden in real prose at depth D (0-1), question at the end",
                 "default": False})
    rows.append({"name": "multikey[:needles=N,seed=S]", "kind": "multikey",
                 "description": "N labelled pass keys in real prose (2-10); the question asks for one",
                 "default": False})
    rows.append({"name": "ruler-mv|mq|vt|fwe|qa[:seed=S]", "kind": "ruler",
                 "description": "RULER-style tasks: multi-value, multi-query, variable tracking, "
                                "frequent words, questions over generated records",
                 "default": False})
    if json_out:
        import json

        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="bundled prompts (sized with --tokens)")
    for col in ("name", "kind", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"] + (" (default)" if r["default"] else ""), r["kind"], r["description"])
    console.print(table)


@prompts_app.command("show")
@cli_command
def show_prompt(
    name: Annotated[str, typer.Argument(help="Bundled prompt name or a generated one: passkey:depth=D,seed=S, "
                                             "multikey:needles=N,seed=S, ruler-mq:seed=S, ...")],
    tokens: TokensOpt = DEFAULT_TOKENS,
    model: ModelOpt = None,
) -> None:
    """Print a bundled prompt's text, sized to --tokens with the model's tokenizer."""
    from sharedattn.analysis.evaluation.prompt_suite import parse_task_name
    from sharedattn.analysis.files.prompts import is_prompt_name

    from .common import UserError, load_prompts

    if not is_prompt_name(name) and parse_task_name(name) is None:
        raise UserError(f"no bundled prompt named {name!r} (see `sharedattn prompts list`)")
    loaded = ModelChoice(model, None).load()
    prompt = load_prompts(loaded, [name], tokens, False)[0]
    console.print(prompt.text, markup=False)
    note = f"{prompt.name}: {prompt.num_tokens} tokens, sha256 {prompt.sha256[:16]}"
    if prompt.answer:
        note += f", answer {prompt.answer}"
    from .common import err_console

    err_console.print(f"[dim]{note}[/]")


def register(app: typer.Typer) -> None:
    app.add_typer(prompts_app, name="prompts")
