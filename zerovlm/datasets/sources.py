"""What every real dataset source shares: the upstream locations (sources.yaml), draft examples, and
the bad-record policy.

A source parses its annotation files into `Draft`s: examples whose image is known by name and URL but
not yet fetched. Selection (limit, stratified sample) works on drafts, so that only the images of the
selected examples are ever downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zerovlm.io import ZeroVLMError

SOURCES_FILE = Path(__file__).with_name("sources.yaml")


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, Any]:
    return yaml.safe_load(SOURCES_FILE.read_text())


def source_spec(family: str) -> dict[str, Any]:
    """The sources.yaml section of a dataset family ("vsr" or "whatsup")."""
    return _sources()[family]


def fill_url(template: str, **values: str) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as error:
        raise ZeroVLMError(
            f"URL template {template!r} uses an unknown placeholder {error}; available: {sorted(values)}"
        ) from None


@dataclass(frozen=True)
class ImageRef:
    """Where an example's image comes from: a name under the raw folder and the URL to fetch it."""

    relative: str  # path under the dataset's raw image folder (checked with safe_join)
    url: str | None  # None: the image is only available locally (e.g. extracted from an archive)


@dataclass(frozen=True)
class Draft:
    """An example before its image is stored: every `Example` field but image_id / image_file."""

    fields: dict[str, Any]  # example_id, dataset, split, task, caption, options, answer_index, relation, ...
    image: ImageRef | None  # None: rendered in memory (synthetic scenes)
    unit: str  # examples that are selected together (a What'sUp set, a synthetic scene)
    stratum: str  # the relation used for stratified sampling
    origin: str = ""  # "<annotation file>:<line or record position>", for error messages

    @property
    def example_id(self) -> str:
        return self.fields["example_id"]


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int | None  # 1-based line (JSONL) or record position (JSON list); None for a whole file
    field: str | None
    reason: str
    check: str | None = None  # the image check it failed (its param's name), for an image refused by prepare

    def describe(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {f'field {self.field!r}: ' if self.field else ''}{self.reason}"


@dataclass
class BadRecords:
    """Strict (the default) raises on the first bad record; skip_bad counts and lists them instead."""

    skip_bad: bool
    records: list[BadRecord] = field(default_factory=list)

    def report(
        self, file: str | Path, line: int | None, field_name: str | None, reason: str, check: str | None = None
    ) -> None:
        bad = BadRecord(str(file), line, field_name, reason, check)
        if not self.skip_bad:
            raise ZeroVLMError(f"{bad.describe()} (set data.skip_bad: true to skip and count bad records)")
        self.records.append(bad)

    def report_draft(self, draft: Draft, field_name: str, reason: str, check: str | None = None) -> None:
        """Report the record a draft came from (its origin, "<file>:<line or position>")."""
        file_name, _, line = draft.origin.rpartition(":")
        self.report(file_name, int(line) if line.isdigit() else None, field_name, reason, check)

    def summary(self) -> dict[str, Any]:
        by_field: dict[str, int] = {}
        by_check: dict[str, int] = {}
        for bad in self.records:
            by_field[bad.field or "record"] = by_field.get(bad.field or "record", 0) + 1
            if bad.check:
                by_check[bad.check] = by_check.get(bad.check, 0) + 1
        return {
            "count": len(self.records),
            "by_field": dict(sorted(by_field.items())),
            "by_check": dict(sorted(by_check.items())),
            "records": [bad.__dict__ for bad in self.records],
        }


def report_missing_images(drafts: list[Draft], problems: dict[str, str], bad: BadRecords, field_name: str) -> None:
    """Strict: one error listing every failed image. skip_bad: one skip per example that loses its image."""
    if not problems:
        return
    if not bad.skip_bad:
        origin = {}
        for draft in drafts:
            origin.setdefault(draft.image.relative, draft.origin)
        shown = [
            f"  {origin[relative]}: field {field_name!r}: {relative}: {reason}"
            for relative, reason in sorted(problems.items())[:10]
        ]
        more = [f"  ... and {len(problems) - 10} more"] if len(problems) > 10 else []
        raise ZeroVLMError(
            "\n".join(
                [
                    f"{len(problems)} image(s) failed:",
                    *shown,
                    *more,
                    "(set data.skip_bad: true to skip these examples, or supply the files and set data.images_dir)",
                ]
            )
        )
    for draft in drafts:
        if draft.image.relative in problems:
            bad.report_draft(draft, field_name, problems[draft.image.relative])
