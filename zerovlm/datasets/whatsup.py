"""What'sUp (Kamath et al. 2023; amitakamath/whatsup_vlms): subset A (controlled_images) and B
(controlled_clevr).

The annotation JSON is a list of {image_path, caption_options[4]} with the correct caption first. Each
record becomes a 4-option example shown in a seeded shuffle. Image file names encode the pair and the
gold relation (`mug_left_of_knife.jpeg`, `bowl_in-front_of_cup.jpeg`), as the upstream evaluator reads
them: the first and last `_` tokens name the object pair (a set of four images, `group_id`), the second
the relation, which also gives the opposite-relation pair (`pair_id`) for pair and set accuracy.
Files come from the Google Drive ids the upstream loader uses, or from local copies (data.annotations_dir
for the JSON, data.images_dir for the extracted folder or the .tar.gz archive).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

from zerovlm.config import DataConfig
from zerovlm.datasets.download import FileRequest, fetch_file, policy_from_config
from zerovlm.datasets.sources import BadRecords, Draft, ImageRef, fill_url, report_missing_images, source_spec
from zerovlm.io import ZeroVLMError, atomic_dir, safe_join, sha256_file

RAW_FOLDER = "whatsup"  # <raw>/whatsup/<annotation json>, <archive>, <image_folder>/<files>
IMAGE_FIELD = "image_path"  # the record field an image check's bad record names
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.(jpe?g|png)$")
# The word of a caption that states each file-name relation (the upstream evaluator's keywords).
_CAPTION_WORD = {
    "on": "on",
    "under": "under",
    "left": "left",
    "right": "right",
    "in-front": "front",
    "behind": "behind",
}


def subset_spec(dataset: str) -> dict[str, Any]:
    return source_spec("whatsup")["datasets"][dataset]


def _drive_request(cfg: DataConfig, file_id: str, name: str, kind: str) -> FileRequest:
    template = cfg.gdrive_url or source_spec("whatsup")["drive_url"]
    return FileRequest(
        url=fill_url(template, file_id=file_id), relative=f"{RAW_FOLDER}/{name}", follow_html_form=True, kind=kind
    )


# ---------------------------------------------------------------- annotation file
def annotation_file(cfg: DataConfig, raw_dir: Path) -> Path:
    spec = subset_spec(cfg.source)
    if cfg.annotations_dir:
        names = [spec["annotation"], f"data/{spec['annotation']}"]
        for name in names:
            if (Path(cfg.annotations_dir) / name).is_file():
                return Path(cfg.annotations_dir) / name
        raise ZeroVLMError(f"data.annotations_dir={cfg.annotations_dir}: none of {names} exists there")
    request = _drive_request(cfg, spec["annotation_id"], spec["annotation"], "annotation")
    return fetch_file(request, raw_dir, policy_from_config(cfg))


def _parse_file_name(image_path: str, spec: dict) -> tuple[str, str, str] | str:
    """(subject, relation token, reference) from `subject_<relation>[_of]_reference.jpeg`, or a problem."""
    if (
        not isinstance(image_path, str)
        or ".." in image_path.split("/")
        or image_path.startswith("/")
        or "\\" in image_path
    ):
        return f"unsafe or invalid path {image_path!r}"
    name = image_path.split("/")[-1]
    if not _FILE_NAME.match(name):
        return f"unexpected file name {name!r}"
    tokens = name.rsplit(".", 1)[0].split("_")
    if len(tokens) < 3 or tokens[1] not in spec["relations"]:
        return f"no known relation ({', '.join(spec['relations'])}) in {name!r}"
    return tokens[0], tokens[1], tokens[-1]


def _record_problem(record: Any, spec: dict) -> tuple[str | None, str] | None:
    """(field, problem) for the first thing wrong with a record, or None."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    for name in ("image_path", "caption_options"):
        if name not in record:
            return name, "missing"
    options = record["caption_options"]
    if (
        not isinstance(options, list)
        or len(options) != 4
        or not all(isinstance(o, str) and o.strip() for o in options)
        or len(set(options)) != 4
    ):
        return "caption_options", "expected 4 distinct non-empty captions"
    parsed = _parse_file_name(record["image_path"], spec)
    if isinstance(parsed, str):
        return "image_path", parsed
    if _CAPTION_WORD[parsed[1]] not in options[0].lower().split():
        return "caption_options", f"the first (correct) caption {options[0]!r} does not state {parsed[1]!r}"
    return None


def parse_records(path: Path, dataset: str, seed: int, bad: BadRecords) -> list[Draft]:
    spec = subset_spec(dataset)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ZeroVLMError(f"{path}: not a JSON file ({error})") from None
    if not isinstance(records, list):
        raise ZeroVLMError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    drafts, seen = [], set()
    for position, record in enumerate(records, start=1):
        problem = _record_problem(record, spec)
        if problem is not None:
            bad.report(path.name, position, *problem)
            continue
        name = record["image_path"].split("/")[-1]
        if name in seen:
            bad.report(path.name, position, "image_path", f"duplicate image {name!r}")
            continue
        seen.add(name)
        parsed = _parse_file_name(record["image_path"], spec)
        drafts.append(_draft(record, parsed, dataset, spec, seed, f"{path.name}:{position}"))
    return drafts


def _draft(record: dict, parsed: tuple[str, str, str], dataset: str, spec: dict, seed: int, origin: str) -> Draft:
    subject, token, reference = parsed
    name = record["image_path"].split("/")[-1]
    example_id = f"{dataset}/test/{name.rsplit('.', 1)[0]}"
    upstream = [option.strip() for option in record["caption_options"]]
    order = list(range(4))
    random.Random(f"zerovlm-options:{seed}:{example_id}").shuffle(order)  # gold first upstream: hide it
    group_id = f"{dataset}/{subject}_{reference}"
    fields = dict(
        example_id=example_id,
        dataset=dataset,
        split="test",
        task="multiple_choice",
        caption="",
        options=tuple(upstream[i] for i in order),
        answer_index=order.index(0),
        relation=spec["relations"][token],
        group_id=group_id,
        pair_id=f"{group_id}/{spec['pairs'][token]}",
        source={"image_path": record["image_path"], "caption_options": upstream, "origin": origin},
    )
    return Draft(
        fields=fields,
        image=ImageRef(f"{spec['image_folder']}/{name}", None),
        unit=group_id,
        stratum="set",
        origin=origin,
    )


def load_drafts(cfg: DataConfig, raw_dir: Path, bad: BadRecords) -> tuple[list[Draft], dict[str, str]]:
    if cfg.split != "test":
        raise ZeroVLMError(f"data.split={cfg.split!r}: What'sUp has a single split, 'test'")
    path = annotation_file(cfg, raw_dir)
    drafts = parse_records(path, cfg.source, cfg.seed, bad)
    return drafts, {subset_spec(cfg.source)["annotation"]: sha256_file(path)}


# ---------------------------------------------------------------- images
EXTRACTED_FROM = ".extracted-from-sha256"  # a dotfile: never an image name


def extract_images(archive: Path, destination: Path, archive_sha256: str) -> Path:
    """Extract the image files of a tar archive flat into `destination`, once per archive, atomically.

    Only regular files with an image extension are taken (no links, devices, absolute or `..` names,
    or dotfiles such as macOS `._` resource forks); every name also goes through safe_join. The folder
    records the archive's SHA-256, so another archive (data.images_dir changed) is extracted afresh.
    """
    stamp = destination / EXTRACTED_FROM
    if stamp.is_file() and stamp.read_text() == archive_sha256:
        return destination  # atomic_dir renamed it into place: the extraction of this archive finished
    try:
        with tarfile.open(archive, "r:*") as tar, atomic_dir(destination) as tmp:
            for member in tar:
                parts = member.name.split("/")
                name = parts[-1]
                hostile = member.name.startswith("/") or ".." in parts or "\\" in member.name
                if hostile or not member.isfile() or name.startswith(".") or not _FILE_NAME.match(name):
                    continue
                target = safe_join(tmp, name)
                if target.exists():
                    raise ZeroVLMError(f"{archive}: two members are named {name!r}")
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
            (tmp / EXTRACTED_FROM).write_text(archive_sha256)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ZeroVLMError(f"{archive}: not a readable tar archive ({error}); delete it to fetch it again") from None
    return destination


def image_folder(cfg: DataConfig, raw_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Folders to look for images in, and the checksum of an archive that was used."""
    spec = subset_spec(cfg.source)
    extracted = safe_join(raw_dir, f"{RAW_FOLDER}/{spec['image_folder']}")
    if cfg.images_dir and Path(cfg.images_dir).is_dir():
        local = Path(cfg.images_dir)
        return [local, local / spec["image_folder"], local / "data" / spec["image_folder"]], {}
    if cfg.images_dir:
        archive = Path(cfg.images_dir)
        if not archive.is_file():
            raise ZeroVLMError(f"data.images_dir={archive}: neither a folder nor an archive file")
    else:
        request = _drive_request(cfg, spec["archive_id"], spec["archive"], "archive")
        archive = fetch_file(request, raw_dir, policy_from_config(cfg))
    checksum = sha256_file(archive)
    return [extract_images(archive, extracted, checksum)], {spec["archive"]: checksum}


def image_files(
    cfg: DataConfig, raw_dir: Path, drafts: list[Draft], bad: BadRecords
) -> tuple[dict[str, Path], dict[str, str]]:
    """Local files of the drafts' images (relative name -> path), and the archive's checksum; prepare
    decodes and checks each (image_problem)."""
    folders, checksums = image_folder(cfg, raw_dir)
    found, problems = {}, {}
    for draft in drafts:
        relative = draft.image.relative
        name = relative.split("/")[-1]
        path = next((p for p in (safe_join(f, name) for f in folders if f.is_dir()) if p.is_file()), None)
        if path is None:
            problems[relative] = f"{name} not found in {', '.join(map(str, folders))}"
            continue
        found[relative] = path
    report_missing_images(drafts, problems, bad, IMAGE_FIELD)
    return found, checksums
