"""A user's own examples (`source: table`): a JSONL or CSV file of records beside a folder of images.

One record per example, either a true/false caption (VSR-style) or a multiple-choice question
(What'sUp-style); the schema is in docs/datasets.md:
    id        unique name of the example (letters, digits, '_', '-', '.'; not '.' first)
    image     the image file, relative to data.images_dir (null: the table's folder)
    relation  the spatial relation of the gold caption, one of sources.yaml's `table.relations`
    caption + label      true/false: the statement and whether it is true (1/0, true/false)
    options + answer     multiple choice: two or more captions in display order, and the correct one's index
                         (CSV: the options in one cell, separated by sources.yaml's `table.options_separator`)
    pair, set (optional) grouping ids: the examples of one opposite-relation pair, of one set (What'sUp's four
                         images of an object pair); a set, else a pair, else the image is the cluster of the
                         intervals and tests, and pair / set accuracy count them
Records are checked like the built-in datasets' (a bad one stops prepare, or is skipped and counted with
data.skip_bad); images are stored by content like theirs (zerovlm/datasets/examples.py).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from zerovlm.config import DataConfig
from zerovlm.datasets.sources import BadRecords, Draft, ImageRef, report_missing_images, source_spec
from zerovlm.io import ZeroVLMError, parse_jsonl_lines, safe_join, sha256_file

IMAGE_FIELD = "image"  # the record field an image check's bad record names
DATASET = "table"  # Example.dataset; the pool stage prefixes example ids with the grid name
FIELDS = ("id", "image", "relation", "caption", "label", "options", "answer", "pair", "set")
_ID = re.compile(r"^[0-9A-Za-z_-][0-9A-Za-z_.-]{0,99}$")  # no leading '.': never a path's '..'
# label -> answer_index ("yes" first); JSON true/false hash as 1/0, so they are found too
_LABELS = {1: 0, 0: 1, "1": 0, "0": 1, "true": 0, "false": 1}


def table_file(cfg: DataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    if path.suffix not in (".jsonl", ".csv"):
        raise ZeroVLMError(f"data.path={cfg.path!r}: expected a .jsonl or .csv file of examples")
    if not path.is_file():
        raise ZeroVLMError(f"data.path={cfg.path!r}: file not found (looked in {path.resolve()}); fix the path")
    return path


def images_folder(cfg: DataConfig) -> Path:
    return Path(cfg.images_dir).expanduser() if cfg.images_dir else table_file(cfg).parent


# ---------------------------------------------------------------- records
def _records(path: Path):
    """(line, record or None, problem or None) per record: JSONL lines, or CSV rows (empty cells left out)."""
    if path.suffix == ".jsonl":
        yield from parse_jsonl_lines(path)
        return
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        unknown = [name for name in reader.fieldnames or [] if name not in FIELDS]
        if unknown:
            raise ZeroVLMError(f"{path}: unknown column(s) {unknown}; valid: {list(FIELDS)}")
        separator, line = source_spec("table")["options_separator"], reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if None in row:
                yield start, None, f"{len(row[None])} cell(s) more than the header's {len(reader.fieldnames)}"
                continue
            record = {key: value for key, value in row.items() if value not in ("", None)}
            if "options" in record:
                record["options"] = [option.strip() for option in record["options"].split(separator)]
            if isinstance(record.get("answer"), str) and record["answer"].strip().isdigit():
                record["answer"] = int(record["answer"])
            yield start, record, None


def _check_record(record: Any, seen: set[str]) -> tuple[str | None, str] | None:
    """(field, problem) for the first thing wrong with a record, or None."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        return unknown[0], f"unknown field; valid: {list(FIELDS)}"
    for name in ("id", "image", "relation"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            return name, "missing, empty or not a string"
    if not _ID.match(record["id"]):
        return "id", f"{record['id']!r}: use 1-100 letters, digits, '_', '-' or '.' (not first)"
    if record["id"] in seen:
        return "id", f"duplicate id {record['id']!r} (each record needs its own)"
    if record["relation"] not in source_spec("table")["relations"]:
        return "relation", f"unknown relation {record['relation']!r} (valid: sources.yaml table.relations)"
    for name in ("pair", "set"):
        if name in record and (not isinstance(record[name], str | int) or isinstance(record[name], bool)):
            return name, f"expected a string or integer id, got {record[name]!r}"
    true_false, choice = "caption" in record or "label" in record, "options" in record or "answer" in record
    if true_false == choice:
        return None, "give either caption and label (true/false) or options and answer (multiple choice)"
    if true_false:
        if not isinstance(record.get("caption"), str) or not record["caption"].strip():
            return "caption", "missing, empty or not a string"
        label = record.get("label")
        if not isinstance(label, str | int) or (label.lower() if isinstance(label, str) else label) not in _LABELS:
            return "label", f"expected 1 or 0 (true or false), got {label!r}"
        return None
    options = record.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
        return "options", f"expected two or more non-empty captions, got {options!r}"
    if len(set(options)) != len(options):
        return "options", "each caption once"
    answer = record.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(options):
        return "answer", f"expected the index (0..{len(options) - 1}) of the correct option, got {answer!r}"
    return None


def _draft(record: dict, split: str, line: int, file_name: str) -> Draft:
    example_id = f"{DATASET}/{split}/{record['id']}"
    group_id = f"{DATASET}/set/{record['set']}" if "set" in record else None
    pair_id = f"{DATASET}/pair/{record['pair']}" if "pair" in record else None
    if "options" in record:
        task = dict(task="multiple_choice", caption="", options=tuple(record["options"]), answer_index=record["answer"])
    else:
        label = record["label"].lower() if isinstance(record["label"], str) else record["label"]
        task = dict(task="true_false", caption=record["caption"].strip(), options=("yes", "no"))
        task["answer_index"] = _LABELS[label]
    fields = dict(
        example_id=example_id,
        dataset=DATASET,
        split=split,
        relation=record["relation"],
        group_id=group_id,
        pair_id=pair_id,
        source={**record, "line": line},
        **task,
    )
    return Draft(
        fields=fields,
        image=ImageRef(record["image"], None),
        unit=group_id or pair_id or example_id,  # a set or pair is selected whole
        stratum=record["relation"],
        origin=f"{file_name}:{line}",
    )


def load_drafts(cfg: DataConfig, raw_dir: Path, bad: BadRecords) -> tuple[list[Draft], dict[str, str]]:
    """One draft per valid record of the table; bad records go to `bad`. raw_dir: unused (nothing is
    downloaded), kept for the interface every source shares."""
    path = table_file(cfg)
    drafts, seen = [], set()
    for line, record, malformed in _records(path):
        problem = (None, malformed) if malformed is not None else _check_record(record, seen)
        if problem is not None:
            bad.report(path.name, line, *problem)
            continue
        seen.add(record["id"])
        drafts.append(_draft(record, cfg.split, line, path.name))
    return drafts, {path.name: sha256_file(path)}


def image_files(
    cfg: DataConfig, raw_dir: Path, drafts: list[Draft], bad: BadRecords
) -> tuple[dict[str, Path], dict[str, str]]:
    """Local files of the drafts' images (the record's `image` -> path); missing ones go to `bad`. Prepare
    checks each one (image_problem) and stores it by content, so each image's checksum is its image_id."""
    root = images_folder(cfg)
    found: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for relative in dict.fromkeys(d.image.relative for d in drafts):
        try:
            path = safe_join(root, relative)
        except ZeroVLMError as error:
            problems[relative] = str(error)
            continue
        if path.is_file():
            found[relative] = path
        else:
            problems[relative] = f"{relative} not found in {root} (data.images_dir, or the table's folder if null)"
    report_missing_images(drafts, problems, bad, IMAGE_FIELD)
    return found, {}
