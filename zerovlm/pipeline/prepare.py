"""Stage `prepare`: the normalised example table of one grid dataset, and its images.

out/examples.jsonl        one Example per line (zerovlm.datasets.table)
out/images/<image_id>.*   every image once, named by the sha256 prefix of its bytes
out/summary.json          counts per dataset / task / relation, skipped records with reasons,
                          checksums of the source files, the selection that was applied
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from zerovlm.config import DataConfig
from zerovlm.datasets.examples import build_examples
from zerovlm.datasets.table import write_table
from zerovlm.io import atomic_dir, write_json
from zerovlm.stage import path_flag


@dataclass(frozen=True)
class Paths:
    out: Path = path_flag("prepared folder (examples.jsonl, images/, summary.json)")
    raw: Path | None = path_flag("download folder shared by datasets (default: beside --out)", default=None)


def run(paths: Paths, cfg: DataConfig) -> dict:
    """Build paths.out atomically; return its summary."""
    raw = paths.raw if paths.raw is not None else paths.out.parent / "raw"
    with atomic_dir(paths.out) as tmp:
        examples, summary = build_examples(cfg, tmp, raw)
        write_table(tmp, examples)
        write_json(tmp / "summary.json", summary)
    return summary
