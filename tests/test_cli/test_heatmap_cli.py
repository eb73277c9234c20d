"""`sharedattn heatmap` end to end on records saved to tmp_path (no model needed)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.files.records import save_record
from sharedattn_cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recs")
    return [str(save_record(synthetic_record(4, 4, 512, 64, seed=s), folder / f"rec{s}")) for s in (0, 1)]


def run(*args):
    return runner.invoke(app, list(args))


def figures(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_default_png_in_output_folder(recs, tmp_path):
    res = run("heatmap", "--record", recs[0], "--layer", "2", "-o", str(tmp_path / "figs"))
    assert res.exit_code == 0, res.output
    assert figures(tmp_path / "figs") == ["synthetic-synthetic-0-L2-all.png"]
    assert "figure:" in res.output


@pytest.mark.parametrize("suffix,magic", [("svg", b"<?xml"), ("pdf", b"%PDF"), ("png", b"\x89PNG")])
def test_out_file_picks_the_format(recs, tmp_path, suffix, magic):
    out = tmp_path / f"h.{suffix}"
    res = run("heatmap", "-r", recs[0], "--layer", "1", "--head", "3", "--mask", "coverage", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:len(magic)] == magic


@pytest.mark.parametrize("flags", [["--similarity"], ["--clustermap", "--metric", "js"], ["--summary"],
                                   ["--layer", "3", "--mask", "shared"]])
def test_other_views(recs, tmp_path, flags):
    res = run("heatmap", "-r", recs[0], *flags, "-o", str(tmp_path))
    assert res.exit_code == 0, res.output
    assert len(figures(tmp_path)) == 1


def test_across_needs_two_records(recs, tmp_path):
    res = run("heatmap", "-r", recs[0], "-r", recs[1], "--across", "--out", str(tmp_path / "a.png"))
    assert res.exit_code == 0, res.output
    res = run("heatmap", "-r", recs[0], "--across", "--out", str(tmp_path / "b.png"))
    assert res.exit_code == 2 and "at least 2 prompts" in res.output
    assert figures(tmp_path) == ["a.png"]


@pytest.mark.parametrize("args,words", [
    (["--layer", "4"], "layers 0-3"),
    (["--layer", "0", "--head", "9"], "heads 0-3"),
    (["--head", "x"], "'all'"),
    (["--out", "FIG.jpg"], ".png, .svg, .pdf"),
    (["--out", "missing/dir/f.png"], "does not exist"),
    (["--similarity", "--summary"], "choose one"),
    (["--gamma", "1.5"], "gamma"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(recs, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    res = run("heatmap", "-r", recs[0], "-o", "figs", *args)
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert figures(tmp_path) == []


def test_record_without_the_layer(recs, tmp_path):
    from sharedattn.analysis.files.records import load_record

    rec = load_record(recs[0])
    bm = rec.block_mass.clone()
    bm[2] = 0.0
    path = save_record(type(rec)(rec.meta, bm, rec.vertical, rec.slash), tmp_path / "holey")
    res = run("heatmap", "-r", str(path), "--layer", "2", "--out", str(tmp_path / "x.png"))
    assert res.exit_code == 2 and "no attention for layer 2" in res.output
    assert not (tmp_path / "x.png").exists()
