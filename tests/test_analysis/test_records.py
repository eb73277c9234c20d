import json

import pytest
import torch

from sharedattn.analysis.files.fingerprint import FormatError, ModelFingerprint
from sharedattn.analysis.files.records import (
    AttentionRecord,
    PromptInfo,
    RecordMeta,
    check_compatible,
    load_record,
    save_record,
)


def make_record(num_tokens=100, block=32, layers=2, heads=3, model_id="m") -> AttentionRecord:
    fp = ModelFingerprint(model_id, layers, heads, 1, 16, 1024)
    meta = RecordMeta(fp, block, num_tokens, PromptInfo("p", "ab" * 32, "text"))
    nb = meta.num_blocks
    g = torch.Generator().manual_seed(0)
    mass = torch.rand(layers, heads, nb, nb, generator=g).tril()
    mass = mass / mass.sum(-1, keepdim=True)
    prof = torch.rand(layers, heads, num_tokens, generator=g)
    return AttentionRecord(meta, mass, prof, prof.flip(-1))


def test_round_trip(tmp_path):
    rec = make_record()
    path = save_record(rec, tmp_path / "r")
    assert path.name == "r.json" and (tmp_path / "r.safetensors").is_file()
    back = load_record(tmp_path / "r.safetensors")
    assert back.meta == rec.meta
    assert torch.equal(back.block_mass, rec.block_mass) and torch.equal(back.slash, rec.slash)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_shape_checked_on_construction():
    rec = make_record()
    with pytest.raises(FormatError, match="tensor vertical: shape"):
        AttentionRecord(rec.meta, rec.block_mass, rec.vertical[:, :, :5], rec.slash)


@pytest.mark.parametrize("field,value,message", [
    ("schema_version", 99, "schema_version: 99 is not supported"),
    ("block_size", "64", "block_size: expected int"),
    ("kind", "other", "kind: expected"),
    ("num_tokens", 0, "num_tokens: must be positive"),
])
def test_bad_sidecar_fields_are_named(tmp_path, field, value, message):
    path = save_record(make_record(), tmp_path / "r")
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=message):
        load_record(path)


def test_missing_model_field_is_named(tmp_path):
    path = save_record(make_record(), tmp_path / "r")
    data = json.loads(path.read_text())
    del data["model"]["num_kv_heads"]
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match=r"model.num_kv_heads: missing"):
        load_record(path)


def test_tensor_shape_mismatch_on_load(tmp_path):
    path = save_record(make_record(num_tokens=100), tmp_path / "r")
    data = json.loads(path.read_text())
    data["num_tokens"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="tensor vertical"):
        load_record(path)


def test_garbage_files(tmp_path):
    save_record(make_record(), tmp_path / "r")
    (tmp_path / "r.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(FormatError, match="not a safetensors file"):
        load_record(tmp_path / "r.json")
    with pytest.raises(FormatError, match="no such record file"):
        load_record(tmp_path / "missing.json")


def test_mixed_models_and_block_sizes_rejected():
    check_compatible([make_record(), make_record(num_tokens=80)])
    with pytest.raises(FormatError, match="different models .*num_heads"):
        check_compatible([make_record(), make_record(heads=4)])
    with pytest.raises(FormatError, match="block sizes"):
        check_compatible([make_record(), make_record(block=16)])
