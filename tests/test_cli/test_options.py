"""Options across commands: one meaning per short flag, and no command module imports another."""
import ast
from collections import defaultdict
from pathlib import Path

import typer

from sharedattn_cli.app import _COMMAND_MODULES, app

CLI = Path(__file__).resolve().parents[2] / "sharedattn_cli"


def _commands(command, path="sharedattn"):
    """(path, command) for every leaf command of the app, sub-apps included."""
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command, info_name=path)
        for name in command.list_commands(ctx):
            yield from _commands(command.get_command(ctx, name), f"{path} {name}")
    else:
        yield path, command


def short_flag_meanings(root) -> dict[str, dict[tuple[str, ...], list[str]]]:
    """short flag -> {the long flags it stands with: [commands]}."""
    seen: dict[str, dict[tuple[str, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for path, command in _commands(root):
        for param in command.params:
            if param.param_type_name != "option":
                continue
            flags = param.opts + param.secondary_opts
            longs = tuple(sorted(f for f in flags if f.startswith("--")))
            for short in (f for f in flags if not f.startswith("--")):
                seen[short][longs].append(path)
    return seen


def test_every_short_flag_means_one_thing_across_commands():
    meanings = short_flag_meanings(typer.main.get_command(app))
    assert {"-o", "-n", "-m"} <= set(meanings)  # the walk reaches the commands
    clashes = {short: dict(m) for short, m in meanings.items() if len(m) > 1}
    assert clashes == {}


def test_the_walk_sees_a_clash():
    clash = typer.Typer()

    @clash.command("a")
    def a(x: int = typer.Option(0, "--layer", "-l")):
        pass

    @clash.command("b")
    def b(y: int = typer.Option(0, "--lookup", "-l")):
        pass

    meanings = short_flag_meanings(typer.main.get_command(clash))
    assert set(meanings["-l"]) == {("--layer",), ("--lookup",)}


def test_short_flags_keep_their_long_names():
    meanings = short_flag_meanings(typer.main.get_command(app))
    assert set(meanings["-o"]) == {("--out",)}
    assert set(meanings["-l"]) == {("--layer",)}
    assert set(meanings["-r"]) == {("--record", "--records")}


def test_no_command_module_imports_another():
    commands = {f"sharedattn_cli.{name}" for name in _COMMAND_MODULES} | {"sharedattn_cli.bench_capture",
                                                                        "sharedattn_cli.bench_prefill"}
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        name = f"sharedattn_cli.{path.stem}"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = {f"sharedattn_cli.{node.module}"} if node.module else {
                    f"sharedattn_cli.{a.name}" for a in node.names}
                if name != "sharedattn_cli.app":  # the app registers them all
                    offenders += [f"{name} -> {t}" for t in targets & commands if t != name]
    assert offenders == []


def test_option_aliases_live_in_the_options_modules():
    """A command module that defines its own ``X = Annotated[...]`` alias would start a second copy."""
    homes = {"options.py"}
    stray = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            value = getattr(node, "value", None)
            if (isinstance(node, ast.Assign) and isinstance(value, ast.Subscript)
                    and getattr(value.value, "id", None) == "Annotated" and path.name not in homes):
                stray.append(f"{path.name}: {node.targets[0].id}")
    assert stray == []
