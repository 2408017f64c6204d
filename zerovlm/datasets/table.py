"""The normalised example table every dataset source produces (prepare stage output).

One JSONL record per example. Images are stored once per content (file name = sha256 prefix of the
encoded bytes), so datasets that share an image (the two VSR test sets do) share its views too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zerovlm.io import ZeroVLMError, read_jsonl, write_jsonl

TASKS = ("true_false", "multiple_choice")


@dataclass(frozen=True)
class Example:
    example_id: str  # unique and stable across runs: "<dataset>/<split>/<source index or name>"
    dataset: str  # synthetic | vsr_random | vsr_zeroshot | whatsup_a | whatsup_b | table
    split: str
    task: str  # true_false: is `caption` true of the image? multiple_choice: pick from `options`
    image_id: str  # sha256 (first 16 hex) of the image file's bytes
    image_file: str  # relative to the prepared folder, e.g. "images/<image_id>.png"
    caption: str  # the statement (true_false) or "" (multiple_choice)
    options: tuple[str, ...]  # true_false: ("yes", "no"); multiple_choice: captions in display order
    answer_index: int  # index of the correct option in `options`
    relation: str  # spatial relation of the gold caption, e.g. "left of"
    num_objects: int | None = None  # objects in the scene, where known (synthetic scenes; VSR: COCO instances)
    group_id: str | None = None  # What'sUp: the set of 4 images of one object pair; table: the record's `set`
    pair_id: str | None = None  # What'sUp: the opposite-relation pair (left/right, on/under, ...); table: `pair`
    source: dict = field(default_factory=dict)  # original record fields, for auditing

    def __post_init__(self):
        if self.task not in TASKS:
            raise ZeroVLMError(f"example {self.example_id}: unknown task {self.task!r}; valid: {TASKS}")
        if not 0 <= self.answer_index < len(self.options):
            raise ZeroVLMError(
                f"example {self.example_id}: answer_index {self.answer_index} outside {len(self.options)} options"
            )
        if self.task == "true_false" and not self.caption:
            raise ZeroVLMError(f"example {self.example_id}: a true_false example needs a caption")

    @property
    def answer(self) -> str:
        return self.options[self.answer_index]

    def to_record(self) -> dict:
        record = asdict(self)
        record["options"] = list(self.options)
        return record

    @classmethod
    def from_record(cls, record: dict) -> Example:
        known = cls.__dataclass_fields__
        unknown = set(record) - set(known)
        if unknown:
            raise ZeroVLMError(f"example record has unknown fields {sorted(unknown)}")
        return cls(**{**record, "options": tuple(record["options"])})


TABLE_FILE = "examples.jsonl"


def write_table(prepared_dir: str | Path, examples: Iterable[Example]) -> int:
    examples = list(examples)
    if not examples:
        raise ZeroVLMError("the dataset selection is empty: check data.source, data.split and data.limit")
    ids = [e.example_id for e in examples]
    if len(set(ids)) != len(ids):
        raise ZeroVLMError("duplicate example ids in the prepared table")
    return write_jsonl(Path(prepared_dir) / TABLE_FILE, (e.to_record() for e in examples))


def read_table(prepared_dir: str | Path) -> list[Example]:
    path = Path(prepared_dir) / TABLE_FILE
    examples = []
    for number, record in enumerate(read_jsonl(path), start=1):
        try:
            examples.append(Example.from_record(record))
        except (TypeError, ZeroVLMError) as error:
            raise ZeroVLMError(f"{path}:{number}: {error}") from None
    if not examples:
        raise ZeroVLMError(f"{path}: the prepared table is empty")
    return examples
