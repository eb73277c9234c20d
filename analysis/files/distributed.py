"""Data-parallel runs under torchrun: this rank's share of a work list, and the merged results.

torchrun starts one process per rank and tells each its place through the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). ``World.from_env()`` reads them;
without them (or with a world of one) every method below is the one-process identity, so library
code takes a ``World`` and runs unchanged in one process.

- Split: rank r takes items r, r + size, r + 2 size, ... of a work list (``World.indices``),
  whatever the items are, so the split depends only on the list's length.
- Merge: each rank hands back ``(index, result)`` pairs; ``gather`` (to rank 0) and ``all_gather``
  (to every rank) reassemble them in the list's order, so code after the merge sees exactly the
  list one process would have made. Results are pickled on the rank that made them, with any
  device tensor moved to the CPU, and travel as bytes over the CPU (gloo) side of the group.
- Errors: every exchange begins with an all-gather of each rank's status. A rank whose work
  raised calls ``fail``, which takes part in that next status exchange with its one-line error;
  every rank then raises ``RankFailure`` naming the failed rank(s), before anything is written
  (only rank 0 writes, after the merge). ``finish`` is a last status exchange, so a rank that fails
  after the merge (rank 0 writing) fails the others too.

So every collective a rank makes is a status exchange, optionally followed at once by one data
exchange of bytes pickled beforehand: a rank that fails at any point meets the others at their
next status exchange, and no rank waits on one that has stopped. A rank that dies outright
(killed, segfault) is torchrun's to report: it stops the other ranks.

The other way past one GPU, one model sharded over several, is accelerate's (``DeviceMap``: the
choices of ``--device-map``; analysis/hf/models.py loads with them).

Imports torch only inside functions (``torch.distributed`` when a world of several starts).
"""
from __future__ import annotations

import atexit
import io
import os
import pickle
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, Callable, Iterable, Sequence

# A rank that finishes its share waits for the slowest one at the merge: long enough for a day of
# prompts. A rank that dies does not make the others wait this long: torchrun stops them.
WAIT = timedelta(hours=24)


class DeviceMap(str, Enum):
    """How accelerate shards one model over the GPUs (then the CPU), whole decoder layers each."""

    AUTO = "auto"  # as balanced
    BALANCED = "balanced"  # even memory on every GPU
    BALANCED_LOW_0 = "balanced_low_0"  # less on GPU 0 (room for generation)
    SEQUENTIAL = "sequential"  # fill GPU 0, then GPU 1, ...


class RankFailure(Exception):
    """One or more ranks failed; the message is one line naming each failed rank and its error.

    ``known``: every failure was a known error (a bad input, out of memory), exit code 2."""

    def __init__(self, message: str, known: bool = True):
        super().__init__(message)
        self.known = known


@dataclass(frozen=True)
class _Status:
    rank: int
    error: str | None = None  # None: ok
    known: bool = True


@dataclass
class World:
    """This process's place among torchrun's ranks (``rank`` of ``size``; one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    _broken: bool = field(default=False, repr=False)  # a status exchange reported a failure: no more exchanges

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "World":
        """The world torchrun describes in the environment; one process without it."""
        env = os.environ if environ is None else environ
        size = int(env.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return cls()
        rank = int(env["RANK"])
        return cls(rank=rank, size=size, local_rank=int(env.get("LOCAL_RANK", rank)))

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes."""
        return self.rank == 0

    def indices(self, count: int) -> range:
        """This rank's share of ``count`` items: round-robin by index."""
        return range(self.rank, count, self.size)

    def mine(self, items: Sequence) -> list[tuple[int, Any]]:
        """``(index, item)`` for this rank's share of ``items``."""
        return [(i, items[i]) for i in self.indices(len(items))]

    def map(self, items: Sequence, fn: Callable[[int, Any], Any], *, to_all: bool = False) -> list | None:
        """``[fn(i, item) for every item]`` in the list's order, each computed on the rank that owns it;
        on rank 0 only (None elsewhere) unless ``to_all``."""
        local = [(i, fn(i, item)) for i, item in self.mine(items)]
        return self.all_gather(local, len(items)) if to_all else self.gather(local, len(items))

    # ---- process group ------------------------------------------------------------------------

    def start(self, cuda: bool) -> None:
        """Join the process group (idempotent). ``cuda``: this rank computes on GPU ``local_rank``
        (made the current device, so a plain ``cuda`` device means it), and the group gets NCCL for
        CUDA tensors beside gloo; results and statuses always go over gloo, from the CPU."""
        if not self.parallel:
            return
        import torch
        import torch.distributed as dist

        if cuda:
            torch.cuda.set_device(self.local_rank)
        if dist.is_initialized():
            return
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=WAIT)
        atexit.register(_leave)

    # ---- exchanges ----------------------------------------------------------------------------

    def check(self) -> None:
        """A status exchange: returns when every rank is ok, else raises ``RankFailure``."""
        self._exchange_status(_Status(self.rank))

    def fail(self, error: str, known: bool = True) -> None:
        """This rank failed with ``error`` (one line): tell the others at their next status
        exchange, then raise ``RankFailure``. In one process: raise it at once."""
        self._exchange_status(_Status(self.rank, error, known))
        raise RankFailure(error, known)  # one process, or a world that already broke

    def finish(self) -> None:
        """The last status exchange of a command: a rank that failed after the merge fails all."""
        self.check()

    def gather(self, local: Iterable[tuple[int, Any]], count: int) -> list | None:
        """Every rank's ``(index, result)`` pairs as one list in index order, on rank 0; None on the
        others. ``count``: the length of the work list (every index must come back once)."""
        local = list(local)
        if not self.parallel:
            return _ordered([local], count)
        import torch.distributed as dist

        payload = _dumps(local)
        self.check()
        parts = [None] * self.size if self.is_main else None
        dist.gather_object(payload, parts, dst=0)
        return _ordered([pickle.loads(p) for p in parts], count) if self.is_main else None

    def all_gather(self, local: Iterable[tuple[int, Any]], count: int) -> list:
        """As ``gather``, on every rank."""
        local = list(local)
        if not self.parallel:
            return _ordered([local], count)
        import torch.distributed as dist

        payload = _dumps(local)
        self.check()
        parts = [None] * self.size
        dist.all_gather_object(parts, payload)
        return _ordered([pickle.loads(p) for p in parts], count)

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the others pass anything, e.g. None)."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        box = [_dumps(value) if self.is_main else None]
        self.check()
        dist.broadcast_object_list(box, src=0)
        return pickle.loads(box[0])

    def _exchange_status(self, status: _Status) -> None:
        if not self.parallel or self._broken:
            return
        import torch.distributed as dist

        statuses: list = [None] * self.size
        dist.all_gather_object(statuses, status)
        failed = [s for s in statuses if s.error is not None]
        if failed:
            self._broken = True
            raise RankFailure(describe_failures(failed, self.size), all(s.known for s in failed))


def describe_failures(failed: list, size: int) -> str:
    """One line: ``rank 1 of 2 failed: ...``; ranks with the same error share its mention."""
    by_error: dict[str, list[int]] = {}
    for status in failed:
        by_error.setdefault(status.error, []).append(status.rank)
    parts = []
    for error, ranks in by_error.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        parts.append(f"{who}: {error}" if len(by_error) > 1 else f"{who} of {size} failed: {error}")
    return parts[0] if len(parts) == 1 else f"{len(failed)} of {size} ranks failed: " + "; ".join(parts)


def _ordered(parts: list[list[tuple[int, Any]]], count: int) -> list:
    out: list = [None] * count
    seen = [False] * count
    for part in parts:
        for i, value in part:
            if not 0 <= i < count or seen[i]:
                raise ValueError(f"merged results: index {i} is out of range or came back twice")
            out[i], seen[i] = value, True
    missing = [i for i, s in enumerate(seen) if not s]
    if missing:
        raise ValueError(f"merged results: no result for items {missing}")
    return out


class _CpuPickler(pickle.Pickler):
    """Pickles device tensors as CPU tensors: the receiving rank may not own that device."""

    def reducer_override(self, obj):
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor) and obj.device.type != "cpu":
            return _same, (obj.cpu(),)
        return NotImplemented


def _same(value):
    return value


def _dumps(value: Any) -> bytes:
    buf = io.BytesIO()
    _CpuPickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buf.getvalue()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
