"""`sharedattn capture` and `prompts` end to end, including every bad input (exit 2, one line)."""
import os

from typer.testing import CliRunner

from sharedattn.analysis.files.records import load_record
from sharedattn_cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_capture_tiny_model_writes_records(tmp_path):
    out = tmp_path / "recs"
    res = invoke("capture", "--random-init", "llama-tiny", "stdlib-code", "passkey:depth=0.5",
                 "--tokens", 150, "-o", out)
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["passkey_depth_0.5_seed_0-150.json", "passkey_depth_0.5_seed_0-150.safetensors",
                     "stdlib-code-150.json", "stdlib-code-150.safetensors"]
    rec = load_record(out / "stdlib-code-150.json")
    assert rec.meta.model.model_id == "random:llama-tiny"
    assert rec.meta.config["realistic_model"] is False
    assert "not realistic" in res.output


def test_capture_bundled_model_default_prompt(tmp_path):
    res = invoke("capture", "--tokens", 96, "-o", tmp_path)
    assert res.exit_code == 0, res.output
    rec = load_record(tmp_path / "stdlib-prose-96.json")
    assert rec.meta.model.model_id == "smollm2-135m" and rec.block_mass.shape == (30, 9, 2, 2)


def test_model_then_prompt_file_positional(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("A short prompt that still has a few tokens in it.")
    res = invoke("capture", "smollm2-135m", prompt, "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "prompt-12.json").is_file() or any((tmp_path / "o").glob("prompt-*.json"))


def _bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "nul.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "long.txt").write_text("lorem ipsum " * 6000)
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "afile").write_text("x")
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("secret")
    unreadable.chmod(0)
    cases = [
        (["missing.txt"], "does not exist"),
        (["empty.txt"], "is empty"),
        (["latin.txt"], "not UTF-8"),
        (["nul.txt"], "binary"),
        (["long.txt"], "longer than the model's context of 8192"),
        (["notamodel", "stdlib-code"], "not a Hugging Face model folder"),
        (["stdlib-code", "-o", "afile/sub"], "is a file"),
        (["no-such-prompt"], "no bundled prompt"),
        (["--tokens", "9000"], "longer than the model's context"),
        (["--block-size", "48"], "block size must be one of"),
        (["--random-init", "gpt-99"], "unknown random-init shape"),
    ]
    if os.geteuid() != 0:  # root reads everything
        cases.append((["secret.txt"], "cannot be read"))
    return cases


def test_bad_inputs_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        res = invoke("capture", *args, *(["-o", out] if "-o" not in args else []))
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
        assert "Traceback" not in res.output
        assert not out.exists(), args  # nothing half-written


def test_long_prompt_truncate(tmp_path):
    (tmp_path / "long.txt").write_text("lorem ipsum " * 6000)
    res = invoke("capture", "--random-init", "llama-tiny", tmp_path / "long.txt", "--truncate", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "long-8192.json").is_file()


def test_prompts_list_and_show():
    res = invoke("prompts", "list")
    assert res.exit_code == 0 and "stdlib-code" in res.output and "passkey" in res.output
    res = invoke("prompts", "show", "passkey:depth=0.1", "--tokens", 200)
    assert res.exit_code == 0 and "pass key is" in res.output
    res = invoke("prompts", "show", "nope")
    assert res.exit_code == 2 and "no bundled prompt" in res.output
    res = invoke("prompts", "show", "multikey:needles=3,seed=1", "--tokens", 300)
    assert res.exit_code == 0 and "What is the" in res.output and "multikey" in invoke("prompts", "list").output
    res = invoke("prompts", "show", "multikey:needles=11")
    assert res.exit_code == 2 and "needles must be 2..10" in res.output
