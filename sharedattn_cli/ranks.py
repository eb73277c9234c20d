"""Commands that split their prompts over torchrun's ranks (capture, compare, cluster).

``torchrun --nproc-per-node N -m sharedattn_cli COMMAND ...`` starts the command once per rank.
``over_ranks`` marks a command that takes part: under several ranks ``cli_command`` runs it through
``_run_on_rank``, which joins the process group (each rank on GPU ``LOCAL_RANK`` when it computes on
CUDA) and turns an error of this rank into a status every rank sees
(``analysis/files/distributed.py``), so the run fails as a whole with one line naming the rank.
The command itself takes ``current_world()`` and hands it to the library calls that split their
prompts; after the merge only rank 0 writes and prints.
"""
from __future__ import annotations

from typing import Callable, Optional

import typer

from .common import UserError, known_message


def over_ranks(fn: Callable) -> Callable:
    """Mark a command (put it below ``@cli_command``) as one that splits its prompts over the ranks."""
    fn.over_ranks = lambda world, args, kwargs: _run_on_rank(fn, world, args, kwargs)
    return fn


def _run_on_rank(fn: Callable, world, args, kwargs):
    from sharedattn.analysis.files.distributed import RankFailure

    _check_placement(kwargs.get("device"), kwargs.get("device_map"), world.size)
    world.start(cuda=_on_cuda(kwargs.get("device")))
    try:
        result = fn(*args, **kwargs)
    except RankFailure:
        raise
    except typer.Exit as exc:
        if exc.exit_code:
            world.fail(f"exited with code {exc.exit_code}")
        world.finish()
        raise
    except Exception as exc:  # noqa: BLE001 - every error of this rank reaches the others
        message = known_message(exc)
        try:
            world.fail(message or f"{type(exc).__name__}: {_first_line(exc)}", known=message is not None)
        except RankFailure as failure:
            raise failure from exc
    world.finish()
    return result


def _check_placement(device: Optional[str], device_map: Optional[str], size: int) -> None:
    """Each rank holds a whole model on its own device: no sharding, no fixed GPU index."""
    if device_map:
        raise UserError(f"--device-map does not go with torchrun ({size} ranks): each rank holds the whole "
                        "model; shard a model in one process, or split prompts over ranks")
    if device and ":" in device:
        raise UserError(f"--device {device}: under torchrun give --device cuda (rank r computes on GPU "
                        "LOCAL_RANK) or cpu")


def _on_cuda(device: Optional[str]) -> bool:
    import torch

    if device is None:
        return torch.cuda.is_available()
    return device.startswith("cuda")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "(no message)"
