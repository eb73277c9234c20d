"""`--device-map` and `--max-memory` (a model sharded with accelerate): the plumbing, on the CPU.

Without GPUs accelerate places every layer on the CPU, so the outputs must equal a plain load's; the
GPU side (layers on two GPUs) is tests/test_gpu/test_sharded_gpu.py.
"""
import json

import pytest
from typer.testing import CliRunner

from sharedattn_cli.app import app
from sharedattn_cli.common import UserError, parse_max_memory

runner = CliRunner()
TINY = ["--random-init", "llama-tiny"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_capture_with_a_device_map_writes_the_records_of_a_plain_load(tmp_path):
    plain = invoke("capture", *TINY, "stdlib-code", "--tokens", 128, "-o", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    sharded = invoke("capture", *TINY, "stdlib-code", "--tokens", 128, "--device-map", "auto",
                     "--max-memory", "cpu=8GiB", "-o", tmp_path / "sharded")
    assert sharded.exit_code == 0, sharded.output
    assert "device map auto: 1 module(s) on cpu" in sharded.output
    for name in ("stdlib-code-128.json", "stdlib-code-128.safetensors"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()


def test_prefill_with_a_device_map(tmp_path):
    res = invoke("prefill", *TINY, "--tokens", 512, "--dense-below", 0, "--min-budget", 64, "--max-new-tokens", 1,
                 "--method", "vertical-slash", "--gamma", "0.3", "--device-map", "sequential", "-o", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["summary"]["density"] < 1


@pytest.mark.parametrize("extra, message", [
    (["--device-map", "auto", "--device", "cpu"], "not both"),
    (["--max-memory", "cpu=1GiB"], "needs a device map"),
    (["--device-map", "auto", "--max-memory", "0:60GiB"], "expected DEVICE=SIZE"),
    (["--device-map", "everywhere"], "--device-map"),
])
def test_bad_placement_is_one_line_and_exit_2(tmp_path, extra, message):
    for command in ("capture", "prefill", "compare"):
        res = invoke(command, *TINY, "stdlib-code", "--tokens", 128, *extra, "-o", tmp_path / "o")
        assert res.exit_code == 2 and message in res.output, (command, res.output)
        assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_without_accelerate_the_option_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate"
                        else find_spec(name, *a))
    res = invoke("capture", *TINY, "stdlib-code", "--tokens", 128, "--device-map", "auto", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "pip install accelerate" in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1


def test_max_memory_parses_to_accelerates_form():
    assert parse_max_memory("0=60GiB, 1=60GiB,cpu=100GiB") == {0: "60GiB", 1: "60GiB", "cpu": "100GiB"}
    assert parse_max_memory("0=1000000") == {0: 1000000} and parse_max_memory(None) is None
    with pytest.raises(UserError, match="'gpu0=1GiB'"):
        parse_max_memory("gpu0=1GiB")
