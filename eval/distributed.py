"""Spreading a leaderboard run over processes: ``torchrun`` ranks, or independent ``--shard I/N`` runs.

The runner calls this module only; it stays one code path for 1 and N processes.

**Processes.** Started by ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: SLURM's ``srun`` with torchrun, every cloud
launcher), :func:`setup` initialises ``torch.distributed`` with the NCCL backend when the run uses
CUDA and gloo otherwise; each rank uses the GPU ``cuda:LOCAL_RANK``. Without those variables the
run is a single process and nothing is initialised.

**The share of each rank** (:func:`my_batches`): the scored images of a (dataset, model) group
are cut into the batches a single process would run, ``batch_size`` images each, in scoring
order; batch ``b`` goes to rank ``b mod N``. Every image is therefore explained in exactly the
batch it would have in one process, so deterministic explainers give the same numbers, and the
stochastic ones (RISE, SmoothGrad, the random map) draw their noise from the run seed and the
image itself, never from the rank (see their docstrings). Per-image scores and the exact integer
accumulators (PxAP's counts, the IoU curve's sums) are gathered to rank 0, which alone reads and
writes the cache and the results folder.

**What rank 0 decides for everyone** (broadcast): the scored images, which cells are missing from
the cache, a trained model (rank 0 trains it; the others wait and load its checkpoint: training is
a small part of a large board and one seeded training gives one model, whereas data-parallel
training would give another model than a single process does), and a fitted explainer's state
(VEBI is fitted once, on rank 0).

**Faults.** ``torchrun`` stops every rank when one dies and names the failed rank; a collective
that fails on a surviving rank raises :class:`RankLost` naming the operation. Cells are written
only once every rank's share is gathered, so a rerun recomputes exactly the unfinished cells.

**Shards** (``--shard I/N``, for schedulers without ``torch.distributed``): the process computes
the share of rank ``I - 1`` of ``N`` and writes it, uncombined, into its own results folder;
``an8flower leaderboard merge DIR...`` (:mod:`an8flower.eval.shards`) combines the finished shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from an8flower.errors import UsageError

__all__ = ["World", "RankLost", "setup", "my_batches", "SINGLE"]


class RankLost(RuntimeError):
    """A collective operation failed: another rank died or the connection to it was lost."""


@dataclass(frozen=True)
class World:
    """Which process this is: ``rank`` of ``size``; ``shard`` is True for an independent ``--shard`` run.

    ``distributed`` is True when ``torch.distributed`` is initialised (collectives are real).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False
    shard: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this process writes the results (rank 0, or any shard: each writes its own folder)."""
        return self.rank == 0 or self.shard

    def label(self) -> str:
        if self.shard:
            return f"shard {self.rank + 1}/{self.size}"
        return f"rank {self.rank}/{self.size}" if self.size > 1 else "single process"

    # -- collectives (no-ops for a single process or a shard) ----------------------------------

    def broadcast(self, obj: Any, what: str) -> Any:
        """``obj`` of rank 0 on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        try:
            dist.broadcast_object_list(box, src=0)
        except RuntimeError as exc:
            raise RankLost(f"{self.label()}: lost the other ranks while receiving {what} ({_first_line(exc)})") from None
        return box[0]

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        """On rank 0, every rank's ``obj`` in rank order; on the others, None."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.rank == 0 else None
        try:
            dist.gather_object(obj, out, dst=0)
        except RuntimeError as exc:
            raise RankLost(f"{self.label()}: lost the other ranks while gathering {what} ({_first_line(exc)})") from None
        return out

    def barrier(self, what: str) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        try:
            dist.barrier()
        except RuntimeError as exc:
            raise RankLost(f"{self.label()}: lost the other ranks while waiting for {what} ({_first_line(exc)})") from None

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


#: The world of a single process.
SINGLE = World()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | None = None, shard: tuple[int, int] | None = None, timeout_s: float = 1800.0) -> World:
    """The world of this process; initialise ``torch.distributed`` when started by a launcher.

    Args:
        device: the run's device setting (``"cuda"``/``"cpu"``/None = CUDA when available); with
            several ranks on CUDA each rank takes ``cuda:LOCAL_RANK``.
        shard: ``(I, N)`` of ``--shard I/N`` (1-based): an independent share, no communication.
        timeout_s: how long a collective waits for the other ranks before failing.

    Raises:
        UsageError: ``--shard`` under ``torchrun`` (one or the other), or inconsistent variables.
    """
    world_size = _env_int("WORLD_SIZE")
    if shard is not None:
        if world_size is not None and world_size > 1:
            raise UsageError("--shard splits a run without torch.distributed; under torchrun, leave it out")
        i, n = shard
        return World(rank=i - 1, size=n, shard=True)
    if world_size is None or world_size == 1:
        return SINGLE
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    if rank is None or not 0 <= rank < world_size:
        raise UsageError(f"RANK={os.environ.get('RANK')!r} is not in 0..{world_size - 1} (WORLD_SIZE={world_size})")
    local_rank = rank if local_rank is None else local_rank
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(rank=rank, size=world_size, local_rank=local_rank, distributed=True)


def my_batches(n_images: int, batch_size: int, world: World) -> Iterator[slice]:
    """The batches (slices of the scored-image list) this process explains: batch ``b`` goes to ``b mod N``."""
    for b, start in enumerate(range(0, n_images, batch_size)):
        if b % world.size == world.rank:
            yield slice(start, min(n_images, start + batch_size))


def explainer_state(explainer: Any) -> bytes | None:
    """The saved state of a fitted explainer (its ``save`` written to bytes), to broadcast it."""
    import tempfile

    if not getattr(explainer, "requires_fit", False):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.npz")
        explainer.save(path)
        with open(path, "rb") as fh:
            return fh.read()


def load_explainer_state(explainer: Any, state: bytes | None) -> Any:
    """Load what :func:`explainer_state` produced into a freshly built explainer of the same kind."""
    import tempfile

    if state is None:
        return explainer
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.npz")
        with open(path, "wb") as fh:
            fh.write(state)
        explainer.load(path)
    return explainer
