"""Finished work that survives an interruption: the one resume mechanism of the long stages (views, infer).

A stage works in a folder beside its output, `.<output name>.partial/`:

    stamp.json   {"inputs": ..., "code": ..., **about}: what the outputs depend on (settings, model, input data)
                 and a hash of the code that computes them; `about` is there for a reader only
    part-*       each process' finished work, in the stage's own format (view shards, answer lines)

A re-run with the same stamp resumes from the parts; a partial folder written from other inputs or by other
code is discarded (a warning says so) and the stage starts afresh. The work is planned in fixed units (a views
batch, an infer chunk) that are always computed whole, so every item is computed in the same company as in an
uninterrupted run. Once every unit is done, the main process writes the whole output into a temporary folder
that replaces the output in one rename, and removes the partial folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Callable, Container, Iterator
from pathlib import Path
from typing import TypeVar

from zerovlm.io import atomic_dir, write_json
from zerovlm.parallel import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")
STAMP_FILE = "stamp.json"


class PartialRun:
    """The partial folder of the stage output `out` (see the module docstring)."""

    def __init__(self, out: Path, stage: str, inputs: str, code: str, about: dict | None = None):
        self.out, self.stage = Path(out), stage
        self.folder = self.out.parent / f".{self.out.name}.partial"
        self.stamp = {"inputs": inputs, "code": code, **(about or {})}

    def open(self, worker: Worker) -> None:
        """On the main process, keep a partial folder with this stamp or start it afresh; every process then
        waits until the folder is ready."""
        if worker.is_main:
            stamp_file = self.folder / STAMP_FILE
            if self.folder.exists():
                previous = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
                if previous == self.stamp:
                    log.info("%s: resuming from %s", self.stage, self.folder)
                else:
                    log.warning(
                        "%s: discarding %s (written from other inputs or by other code)", self.stage, self.folder
                    )
                    shutil.rmtree(self.folder)
            if not self.folder.exists():
                self.folder.mkdir(parents=True)
                write_json(stamp_file, self.stamp)
        worker.barrier()

    def part(self, worker: Worker) -> Path:
        """This process' part (the stage adds a suffix if it is a file)."""
        return self.folder / worker.part_name

    def parts(self, pattern: str = "part-*") -> list[Path]:
        """Every part, whichever launch (and number of processes) wrote it, in name order."""
        return sorted(self.folder.glob(pattern))

    @contextlib.contextmanager
    def publish(self) -> Iterator[Path]:
        """Yield a temporary folder for the whole output: it replaces `out` and the partial folder is removed
        only when the block succeeds."""
        with atomic_dir(self.out) as tmp:
            yield tmp
        shutil.rmtree(self.folder)


def unfinished(units: list[list[T]], finished: Container[str], key: Callable[[T], str]) -> list[list[T]]:
    """The planned units holding an item whose key is not finished; such a unit is recomputed whole."""
    return [unit for unit in units if any(key(item) not in finished for item in unit)]
