"""`sharedattn report`: one self-contained HTML page; rendered in headless Chromium where present."""
from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.files.records import save_record
from sharedattn_cli.app import app

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    recs = [str(save_record(synthetic_record(4, 4, 512, 64, seed=s), folder / f"rec{s}")) for s in (0, 1)]
    res = CliRunner().invoke(app, ["report", "-r", recs[0], "-r", recs[1], "-o", str(folder / "out")])
    assert res.exit_code == 0, res.output
    return folder / "out" / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    for heading in ("Model summary", "Similarity findings", "Cross-input consistency", "Cluster table"):
        assert heading in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<script" not in text


def test_report_bad_gamma_writes_nothing(tmp_path):
    res = CliRunner().invoke(app, ["report", "--gamma", "0", "-o", str(tmp_path / "r")])
    assert res.exit_code == 2 and "gamma" in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(report, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    script = ("<script>window.onload=()=>{const i=[...document.images];"
              "document.title='loaded:'+i.filter(x=>x.complete&&x.naturalWidth>100).length+'/'+i.length;}"
              "</script>")
    probe = tmp_path / "probe.html"  # the report itself has no script; a copy with a probe checks images
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", script + "</body>"), encoding="utf-8")
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120)
    found = re.search(r"<title>loaded:(\d+)/(\d+)</title>", dom.stdout)
    assert found, dom.stderr[-2000:]
    assert int(found.group(1)) == int(found.group(2)) >= 5
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, "--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 50_000
