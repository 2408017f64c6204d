"""Data parallelism for the views and infer stages through Hugging Face accelerate.

The same stage command runs as one process (`python -m stages.infer ...`) or as several
(`accelerate launch --num_processes N -m stages.infer ...`, one per GPU, or several nodes with
accelerate's multi-node config). Work is split deterministically, round-robin over the plan's units (views:
batches; infer: chunks of examples), each process writes its own part, and the main process merges the parts
in plan order, so the stage's output is the same as a one-process run's.

Within a process, `host_threads` sizes the thread pools of host-side work (batch preparation, stitching).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def host_threads(limit: int = 8) -> int:
    """Threads for host-side work beside the main thread: one per CPU this process may run on (a container's
    or `taskset`'s limit, not the machine's count), at most `limit`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(limit, cpus)


@dataclass(frozen=True)
class Worker:
    rank: int = 0
    world_size: int = 1
    _barrier: Callable[[], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def part_name(self) -> str:
        return f"part-{self.rank:03d}-of-{self.world_size:03d}"

    def owned(self, plan: Sequence[T]) -> list[T]:
        """This process's units of the whole plan: unit i goes to process i modulo the processes, so shares differ
        by at most one unit (a dataset may have only a few infer chunks, which a hash of their keys would spread
        unevenly). Take them from the whole plan, then leave out the finished ones: every process then names the
        same owners, whatever it has seen finished."""
        return list(plan[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self._barrier is not None:
            self._barrier()


def _launched_with_several_processes() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_worker() -> Worker:
    """This process's place in the launch; a plain `python` run is the only worker.

    Under a multi-process launch, accelerate initialises the process group (NCCL on GPUs, gloo on
    CPUs) and each process is pinned to its own GPU (LOCAL_RANK), so `device: auto` finds it.
    """
    if not _launched_with_several_processes():
        return Worker()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if torch.cuda.is_available():
        torch.cuda.set_device(state.local_process_index)
    return Worker(state.process_index, state.num_processes, state.wait_for_everyone)
