from pathlib import Path

from sharedattn_cli.app import app
from sharedattn_cli.docs_gen import render


def test_docs_cli_md_matches_the_app():
    committed = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    assert committed == render(app), "docs/cli.md is stale: python -m sharedattn_cli.docs_gen > docs/cli.md"


def test_every_command_has_help():
    page = render(app)
    for command in ("capture", "similarity", "cluster", "heatmap", "report", "prefill", "prompts list"):
        assert f"## `sharedattn {command}`" in page
