"""`--kernel` on the bench commands: which backends they time, and flash asked for without it."""
import pytest
from typer.testing import CliRunner

from sharedattn.kernels.limits import ConfigError, KernelChoice
from sharedattn_cli.app import app
from sharedattn_cli.common import kernels_to_time


def test_kernels_to_time_without_flash():
    timed, note = kernels_to_time(KernelChoice.AUTO)
    assert timed == ["triton"] and "flash and auto not timed" in note
    assert kernels_to_time(KernelChoice.TRITON) == (["triton"], None)
    with pytest.raises(ConfigError, match="kernel flash"):
        kernels_to_time(KernelChoice.FLASH)


@pytest.mark.parametrize("command", [["bench", "kernel"], ["bench", "prefill"]])
def test_bench_commands_take_the_option(command):
    res = CliRunner().invoke(app, [*command, "--kernel", "flash"])
    assert res.exit_code == 2 and "Traceback" not in res.output  # no GPU here: one line either way
    res = CliRunner().invoke(app, [*command, "--kernel", "nope"])
    assert res.exit_code == 2 and "nope" in res.output
