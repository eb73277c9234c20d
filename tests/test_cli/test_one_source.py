"""Every rule and default is written once, and a bad value fails the same way on every path.

The block sizes the kernels run live in `kernels/limits.py`; the default block, the short-context
rule and the coverage target in `analysis/method/method_config.py`; the CLI's help quotes them.
The source scans below fail if someone writes one of them out again elsewhere.
"""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from sharedattn.analysis.hf.capture import CaptureConfig
from sharedattn.analysis.method import method_config as mc
from sharedattn.kernels import limits
from sharedattn_cli import options
from sharedattn_cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("kernels", "analysis", "sharedattn_cli") for p in (ROOT / folder).rglob("*.py"))


def _files_matching(pattern: str, paths=SOURCES) -> list[str]:
    regex = re.compile(pattern)
    return sorted(str(p.relative_to(ROOT)) for p in paths if regex.search(p.read_text()))


def test_block_sizes_are_written_once():
    assert _files_matching(r"\b16,\s*32,\s*64\b") == ["kernels/limits.py"]


def test_the_short_context_rule_is_written_once():
    # capture and the CLI each used to write `64 if max_positions <= 8192 else 128`
    assert _files_matching(r"\b(64|128) if\b|<=\s*8192\b|8192 else\b") == []
    assert _files_matching(r"SHORT_CONTEXT_BLOCK_SIZE if") == ["analysis/method/method_config.py"]


def test_the_coverage_target_is_written_once_in_the_library():
    library = [p for p in SOURCES if not p.is_relative_to(ROOT / "sharedattn_cli")]
    assert _files_matching(r"\bgamma\b[^\n=(]*=\s*0\.95\b", library) == []
    assert mc.VerticalSlashConfig.gamma == mc.DEFAULT_GAMMA == 0.95


def test_method_option_help_quotes_the_configs():
    text = (ROOT / "sharedattn_cli" / "options.py").read_text().split("# ---- the sparse methods' parameters")[1]
    assert re.findall(r"\(\d|default \d", text) == []  # no number written into a help string
    helps = {name: getattr(options, name).__metadata__[0].help
             for name in ("GammaOpt", "MinBudgetOpt", "TauQaOpt", "TauSOpt", "TauFbOpt", "SinkOpt", "LocalOpt")}
    cfg = mc.SharePrefillConfig()
    assert f"({cfg.gamma})" in helps["GammaOpt"] and f"({cfg.min_budget})" in helps["MinBudgetOpt"]
    assert f"({cfg.tau_qa})" in helps["TauQaOpt"] and f"({cfg.tau_s})" in helps["TauSOpt"]
    assert f"({mc.AShapeConfig.local_tokens})" in helps["LocalOpt"]
    for command in ("prefill", "compare", "capture"):  # prefill and compare had their own alias
        assert _options(command)["--block-size"].help == options.BLOCK_SIZE_HELP
    assert options.BlockSizeOpt.__metadata__[0].help == options.BLOCK_SIZE_HELP
    assert limits.one_of(limits.BLOCK_SIZES) in options.BLOCK_SIZE_HELP


@pytest.mark.parametrize("context,given,want", [(8192, None, 64), (8193, None, 128), (None, None, 64),
                                                (131072, 32, 32)])
def test_capture_and_the_cli_share_the_default_block(context, given, want):
    loaded = SimpleNamespace(fingerprint=SimpleNamespace(max_positions=context))
    assert options.default_block_size(loaded, given) == want
    if context is not None:
        assert CaptureConfig(block_size=given).resolved_block_size(context) == want


def test_configs_accept_exactly_the_block_sizes_the_kernels_run():
    """Validation before any launch, on no device: what passes here is what Triton compiles."""
    for size in range(0, 513):
        runs = size in limits.BLOCK_SIZES
        for make in [lambda s, m=m: mc.make_config(m, block_size=s) for m in mc.MethodName] + \
                    [lambda s: CaptureConfig(block_size=s), limits.check_block_size]:
            if runs:
                make(size)
            else:
                with pytest.raises(limits.ConfigError, match="must be one of 16, 32, 64 or 128"):
                    make(size)
    assert issubclass(limits.ConfigError, ValueError) and mc.ConfigError is limits.ConfigError


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


TINY = ["--random-init", "llama-tiny", "--tokens", "256"]


@pytest.mark.parametrize("command,extra", [
    (["capture"], []),
    (["prefill"], ["--dense-below", "0"]),
    (["compare"], ["--methods", "dense,vertical-slash", "--no-recall"]),
])
@pytest.mark.parametrize("size", ["256", "48"])
def test_bad_block_size_is_one_line_and_exit_2(tmp_path, command, extra, size):
    res = CliRunner().invoke(app, [*command, *TINY, *extra, "--block-size", size, "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(_error_lines(res.output)) == 1, res.output
    assert f"must be one of 16, 32, 64 or 128, got {size}" in res.output


def test_a_config_error_anywhere_in_a_command_is_one_line(tmp_path):
    # bench prefill validates its configs before touching a GPU; it used to print without the funnel
    res = CliRunner().invoke(app, ["bench", "prefill", "--gamma", "1.5"])
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == ["error: gamma must be in (0, 1], got 1.5"]


CLI_SOURCES = sorted((ROOT / "sharedattn_cli").glob("*.py"))


def _options(command_path: str) -> dict:
    """--flag -> click parameter of one command (``"bench prefill"`` for a sub-command)."""
    import typer

    command = typer.main.get_command(app)
    for name in command_path.split():
        command = command.get_command(None, name)
    return {opt: p for p in command.params for opt in p.opts}


def test_cli_defaults_are_read_from_the_library_not_written():
    # gamma 0.95, the dense_below crossover, the capture chunk, ClusterConfig's numbers, the bench block
    assert _files_matching(r"=\s*0\.95\b|default 0\.95", CLI_SOURCES) == []
    assert _files_matching(r"\b(32768|16384)\)|default (32768|16384)", CLI_SOURCES) == []
    assert _files_matching(r"(?m)=\s*0\.5\b|default 0\.5\b|=\s*2,\s*$", [ROOT / "sharedattn_cli" / "cluster.py"]) == []
    assert _files_matching(r"chunk_size\b[^\n=]*=\s*\d", SOURCES) == []
    assert _files_matching(r"\bDEFAULT_CHUNK_SIZE\s*=", SOURCES) == ["kernels/limits.py"]
    assert _files_matching(r"\"block_size\":\s*\d", CLI_SOURCES) == []


def test_cli_defaults_equal_the_config_defaults():
    from sharedattn.analysis.offline.clustering import DEFAULT_DISTANCE_THRESHOLD, ClusterConfig

    for command in ("similarity", "cluster", "heatmap", "report", "bench prefill"):
        assert _options(command)["--gamma"].default == mc.DEFAULT_GAMMA, command
    assert _options("capture")["--chunk-size"].default == CaptureConfig.chunk_size == limits.DEFAULT_CHUNK_SIZE
    cluster = _options("cluster")
    assert cluster["--min-similarity"].default == ClusterConfig.min_similarity
    assert cluster["--min-cluster-size"].default == ClusterConfig.min_cluster_size
    assert f"(default {DEFAULT_DISTANCE_THRESHOLD})" in cluster["--distance-threshold"].help
    assert ClusterConfig().distance_threshold == DEFAULT_DISTANCE_THRESHOLD
    help_text = " ".join(_options("prefill")["--dense-below"].help.split())
    assert mc.dense_below_defaults() in help_text
    for method, value in mc.DENSE_BELOW.items():
        assert mc.make_config(method).dense_below == value and f"{value} for" in help_text


def test_dtype_names_are_listed_once():
    import torch

    from sharedattn.analysis.hf.models import ModelLoadError, resolve_dtype

    assert _files_matching(r"float32, float16, bfloat16|\"bf16\":") == ["kernels/limits.py"]
    assert ", ".join(limits.DTYPES) in options.DtypeOpt.__metadata__[0].help
    for name in (*limits.DTYPES, *limits.DTYPE_ALIASES):
        assert resolve_dtype(name, torch.device("cpu")) is getattr(torch, limits.DTYPE_ALIASES.get(name, name))
    with pytest.raises(ModelLoadError, match="choose from float32, float16, bfloat16"):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.parametrize("command", ["similarity", "report"])
def test_the_threshold_range_is_checked_by_the_library(tmp_path, command):
    assert _files_matching(r"must be in \[0, 1\]", CLI_SOURCES) == []
    res = CliRunner().invoke(app, [command, *TINY, "--threshold", "1.5", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == ["error: --threshold must be in [0, 1], got 1.5"]


def test_autoencoder_threshold_and_suite_defaults_are_read_from_the_library():
    from sharedattn.analysis.evaluation.suite_defaults import QUICK_TOKENS
    from sharedattn.analysis.offline.autoencoder import AutoencoderConfig
    from sharedattn.analysis.offline.cluster_config import DEFAULT_ALIKE
    from sharedattn_cli.common import DEFAULT_TOKENS

    cluster = _options("cluster")
    for flag, field in (("--epochs", "epochs"), ("--latent-dim", "latent_dim"), ("--grid", "grid"), ("--seed", "seed")):
        assert cluster[flag].default == getattr(AutoencoderConfig, field), flag
    for command in ("similarity", "report"):
        assert _options(command)["--threshold"].default == DEFAULT_ALIKE, command
    assert _files_matching(r"ThresholdOpt\s*=\s*\d|threshold: float = \d", SOURCES) == []
    assert _files_matching(r"(?m)^QUICK_TOKENS\s*=", SOURCES) == ["analysis/evaluation/suite_defaults.py"]
    assert f"default {DEFAULT_TOKENS}; {QUICK_TOKENS} with --quick" in _options("compare")["--tokens"].help
