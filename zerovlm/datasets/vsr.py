"""VSR (Visual Spatial Reasoning; cambridgeltl/visual-spatial-reasoning): random and zero-shot splits.

Each JSONL record is one (COCO 2017 image, caption, label) triple; it becomes a true/false example
whose gold answer is "yes" when label is 1. The annotation files are fetched from the repository at a
pinned commit and checked against pinned SHA-256 sums; images come from each record's `image_link`
(COCO), or from a local COCO folder given as data.images_dir (then nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from pathlib import Path
from typing import Any

from zerovlm.config import DataConfig
from zerovlm.datasets.coco_counts import object_counts
from zerovlm.datasets.download import FileRequest, fetch_all, fetch_file, policy_from_config
from zerovlm.datasets.sources import BadRecords, Draft, ImageRef, fill_url, report_missing_images, source_spec
from zerovlm.io import ZeroVLMError, parse_jsonl_lines, safe_join, sha256_file

RAW_FOLDER = "vsr"  # annotations: <raw>/vsr/<split_dir>/<split>.jsonl
COCO_FOLDER = "coco"  # images:      <raw>/coco/<train2017|val2017>/<name>.jpg
_IMAGE_NAME = re.compile(r"^[0-9A-Za-z_-]{1,64}\.jpe?g$")
IMAGE_FIELD = "image"  # the record field an image check's bad record names (the COCO file name)


def split_dir(dataset: str) -> str:
    return source_spec("vsr")["datasets"][dataset]["split_dir"]


# ---------------------------------------------------------------- annotation file
def annotation_request(cfg: DataConfig) -> FileRequest:
    spec = source_spec("vsr")
    folder = split_dir(cfg.source)
    url = fill_url(
        cfg.vsr_annotations_url or spec["annotations_url"], commit=spec["commit"], split_dir=folder, split=cfg.split
    )
    relative = f"{folder}/{cfg.split}.jsonl"
    return FileRequest(url=url, relative=f"{RAW_FOLDER}/{relative}", sha256=spec["sha256"][relative])


def _local_annotation(cfg: DataConfig, request: FileRequest) -> Path:
    """Find the split file in data.annotations_dir: the repo layout, split folders, or flat."""
    root = Path(cfg.annotations_dir)
    folder = split_dir(cfg.source)
    names = [f"data/splits/{folder}/{cfg.split}.jsonl", f"{folder}/{cfg.split}.jsonl", f"{cfg.split}.jsonl"]
    for name in names:
        path = root / name
        if path.is_file():
            actual = sha256_file(path)
            if actual != request.sha256:
                raise ZeroVLMError(
                    f"{path}: SHA-256 {actual} differs from the pinned upstream file "
                    f"({request.sha256}); use the files of commit {source_spec('vsr')['commit']}"
                )
            return path
    raise ZeroVLMError(f"data.annotations_dir={root}: none of {names} exists there")


def annotation_file(cfg: DataConfig, raw_dir: Path) -> Path:
    request = annotation_request(cfg)
    if cfg.annotations_dir:
        return _local_annotation(cfg, request)
    return fetch_file(request, raw_dir, policy_from_config(cfg))


# ---------------------------------------------------------------- records
def _check_record(record: Any) -> tuple[str | None, str] | None:
    """(field, problem) for the first thing wrong with a record, or None."""
    spec = source_spec("vsr")
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    for name in spec["required_fields"]:
        if name not in record:
            return name, "missing"
    if not isinstance(record["caption"], str) or not record["caption"].strip():
        return "caption", "empty or not a string"
    if record["label"] not in (0, 1) or isinstance(record["label"], bool):
        return "label", f"expected 0 or 1, got {record['label']!r}"
    if record["relation"] not in spec["relations"]:
        return "relation", f"unknown relation {record['relation']!r}"
    if not isinstance(record["image"], str) or not _IMAGE_NAME.match(record["image"]):
        return "image", f"not a COCO file name: {record['image']!r}"
    link = urllib.parse.urlsplit(str(record["image_link"]))
    folder = link.path.strip("/").split("/")[0]
    if (
        link.scheme not in ("http", "https")
        or folder not in spec["image_folders"]
        or not link.path.endswith("/" + record["image"])
    ):
        return "image_link", f"not a COCO 2017 image URL for {record['image']!r}: {record['image_link']!r}"
    return None


def parse_records(path: Path, dataset: str, split: str, bad: BadRecords, coco_url: str) -> list[Draft]:
    """One true/false draft per valid line of a VSR split file; bad lines go to `bad`."""
    drafts = []
    for line_number, record, malformed in parse_jsonl_lines(path):
        problem = (None, malformed) if malformed is not None else _check_record(record)
        if problem is not None:
            bad.report(path.name, line_number, *problem)
            continue
        drafts.append(_draft(record, dataset, split, line_number, coco_url, path.name))
    return drafts


def _draft(record: dict, dataset: str, split: str, line: int, coco_url: str, file_name: str) -> Draft:
    folder = urllib.parse.urlsplit(record["image_link"]).path.strip("/").split("/")[0]
    relative = f"{folder}/{record['image']}"
    example_id = f"{dataset}/{split}/{line:05d}"
    fields = dict(
        example_id=example_id,
        dataset=dataset,
        split=split,
        task="true_false",
        caption=record["caption"].strip(),
        options=("yes", "no"),
        answer_index=0 if record["label"] == 1 else 1,
        relation=record["relation"],
        source={**record, "line": line},
    )
    return Draft(
        fields=fields,
        image=ImageRef(relative, f"{coco_url.rstrip('/')}/{relative}"),
        unit=example_id,
        stratum=record["relation"],
        origin=f"{file_name}:{line}",
    )


def with_object_counts(drafts: list[Draft], counts: dict[str, int], bad: BadRecords) -> list[Draft]:
    """Each draft with its image's COCO object count as num_objects; one whose image COCO does not list is a bad
    record."""
    counted = []
    for draft in drafts:
        if draft.image.relative not in counts:
            bad.report_draft(
                draft,
                IMAGE_FIELD,
                f"{draft.image.relative} is not in the COCO 2017 instances annotations; use the official "
                f"annotations_trainval2017.zip (data.coco_annotations), or set data.coco_object_counts: false",
            )
            continue
        counted.append(dataclasses.replace(draft, fields={**draft.fields, "num_objects": counts[draft.image.relative]}))
    return counted


def load_drafts(cfg: DataConfig, raw_dir: Path, bad: BadRecords) -> tuple[list[Draft], dict[str, str]]:
    path = annotation_file(cfg, raw_dir)
    coco_url = cfg.coco_images_url or source_spec("vsr")["images_url"]
    drafts = parse_records(path, cfg.source, cfg.split, bad, coco_url)
    checksums = {f"{split_dir(cfg.source)}/{cfg.split}.jsonl": sha256_file(path)}
    if cfg.coco_object_counts:
        counts, coco_checksums = object_counts(cfg, raw_dir)
        drafts = with_object_counts(drafts, counts, bad)
        checksums.update({f"{COCO_FOLDER}/{name}": digest for name, digest in coco_checksums.items()})
    return drafts, checksums


# ---------------------------------------------------------------- images
def _local_images(images_dir: Path, drafts: list[Draft]) -> tuple[dict[str, Path], dict[str, str]]:
    """A COCO folder: <dir>/train2017/NAME.jpg, or all files flat in <dir>. Returns (found, problems);
    prepare decodes and checks what is found (image_problem)."""
    found: dict[str, Path] = {}
    problems: dict[str, str] = {}
    for relative in dict.fromkeys(d.image.relative for d in drafts):
        candidates = [safe_join(images_dir, relative), safe_join(images_dir, relative.split("/")[-1])]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            problems[relative] = f"{relative} not found in data.images_dir={images_dir}"
            continue
        found[relative] = path
    return found, problems


def _already_there(root: Path, drafts: list[Draft]) -> dict[str, Path]:
    """The drafts' images already in the raw COCO folder (fetched before, or put there by hand)."""
    found = {}
    for relative in dict.fromkeys(d.image.relative for d in drafts):
        try:
            path = safe_join(root, relative)
        except ZeroVLMError:  # left to fetch_all, which reports it
            continue
        if path.is_file():
            found[relative] = path
    return found


def image_files(
    cfg: DataConfig, raw_dir: Path, drafts: list[Draft], bad: BadRecords
) -> tuple[dict[str, Path], dict[str, str]]:
    """Local files of the drafts' images (relative name -> path); failures go to `bad`. Prepare decodes
    and checks each (image_problem), so a file already in the raw folder is not handed to the downloader,
    whose verification would decode it first under Pillow's limit alone; a downloaded one is verified by
    the downloader too. Image checksums are not listed (COCO has thousands); each image's content hash is
    its image_id."""
    if cfg.images_dir:
        found, problems = _local_images(Path(cfg.images_dir), drafts)
    else:
        root = raw_dir / COCO_FOLDER
        found = _already_there(root, drafts)
        requests = [
            FileRequest(url=d.image.url, relative=d.image.relative, is_image=True)
            for d in drafts
            if d.image.relative not in found
        ]
        fetched, failures = fetch_all(requests, root, policy_from_config(cfg), "COCO images")
        found.update(fetched)
        problems = {failure.request.relative: failure.reason for failure in failures}
    report_missing_images(drafts, problems, bad, "image" if cfg.images_dir else "image_link")
    return found, {}
