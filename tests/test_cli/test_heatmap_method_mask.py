"""`heatmap --mask METHOD`: the blocks a prefill method kept, outlined over the captured map."""
from typer.testing import CliRunner

from sharedattn_cli.app import app

runner = CliRunner()
TINY = ["--random-init", "llama-tiny"]


def test_method_mask_overlay(tmp_path):
    res = runner.invoke(app, ["capture", *TINY, "stdlib-code", "--tokens", "700", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    record = str(tmp_path / "stdlib-code-700.json")
    res = runner.invoke(app, ["heatmap", "--record", record, *TINY, "--layer", "1", "--mask", "vertical-slash",
                              "--out", str(tmp_path / "vs.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "vs.png").stat().st_size > 5000
    res = runner.invoke(app, ["heatmap", "--record", record, "--layer", "1", "--mask", "a-shape",
                              "--out", str(tmp_path / "x.png")])  # bundled model: not the record's
    assert res.exit_code == 2 and "another model" in res.output
    assert not (tmp_path / "x.png").exists()
