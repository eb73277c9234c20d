"""Top-level Typer application; each command lives in its own module."""
import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """sharedattn: see, measure and exploit shared attention patterns."""


def main() -> None:
    app()
