import pytest

from sharedattn.analysis.files.prompts import BUNDLED, PromptError, bundled_prompt, passkey_prompt, resolve_prompt


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_prompts_have_exact_length(tokenizer, name):
    p = bundled_prompt(name, tokenizer, 777)
    assert p.num_tokens == 777
    assert len(p.text) > 1000


def test_bundled_prompts_are_different_kinds(tokenizer):
    texts = {n: bundled_prompt(n, tokenizer, 400).text for n in BUNDLED}
    assert "def " in texts["stdlib-code"] and "import" in texts["stdlib-code"]
    assert "def " not in texts["stdlib-prose"][:2000]
    assert "licen" in bundled_prompt("licenses", tokenizer, 2000).text.lower()
    assert len({t[:200] for t in texts.values()}) == len(texts)
    assert {p.kind.value for p in BUNDLED.values()} >= {"code", "prose", "mixed"}


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_hides_key_at_depth(tokenizer, depth):
    p = passkey_prompt(tokenizer, 600, depth=depth, seed=3)
    assert p.num_tokens == 600 and p.answer is not None
    pos = p.text.index(f"The pass key is {p.answer}")
    frac = pos / len(p.text)
    assert abs(frac - depth) < 0.2
    assert p.text.rstrip().endswith("The pass key is")
    assert passkey_prompt(tokenizer, 600, depth=depth, seed=3) == p  # seeded: repeatable


def test_passkey_name_options(tokenizer):
    p = resolve_prompt("passkey:depth=0.25,seed=7", tokenizer, tokens=300, max_tokens=8192)
    assert p.answer and p.name == "passkey:depth=0.25,seed=7"
    with pytest.raises(PromptError, match="depth"):
        resolve_prompt("passkey:depth=2", tokenizer, tokens=300, max_tokens=8192)
    with pytest.raises(PromptError, match="at least"):
        passkey_prompt(tokenizer, 10)


def test_prompt_files(tokenizer, tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("hello world, this is a prompt")
    p = resolve_prompt(str(good), tokenizer, tokens=10, max_tokens=8192)
    assert p.num_tokens > 3 and p.name == str(good)
    cases = {
        "missing.txt": ("does not exist", None),
        "empty.txt": ("is empty", b"  \n"),
        "latin.txt": ("not UTF-8", "caf\xe9".encode("latin-1")),
        "bin.dat": ("binary", b"abc\x00def"),
    }
    for name, (message, data) in cases.items():
        path = tmp_path / name
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(PromptError, match=message):
            resolve_prompt(str(path), tokenizer, tokens=10, max_tokens=8192)
    with pytest.raises(PromptError, match="no bundled prompt"):
        resolve_prompt("nonsense", tokenizer, tokens=10, max_tokens=8192)


def test_too_long_prompt_names_both_lengths(tokenizer, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("word " * 300)
    with pytest.raises(PromptError, match=r"has \d+ tokens.*context of 100"):
        resolve_prompt(str(path), tokenizer, tokens=10, max_tokens=100)
    p = resolve_prompt(str(path), tokenizer, tokens=10, max_tokens=100, truncate=True)
    assert p.num_tokens == 100
    with pytest.raises(PromptError, match="longer than the model's context"):
        resolve_prompt("stdlib-code", tokenizer, tokens=200, max_tokens=100)
