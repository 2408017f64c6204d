"""Objects per COCO 2017 image, from the official instances annotations: the scene complexity of VSR's images.

The source is annotations_trainval2017.zip (sources.yaml `coco`), fetched once into <raw>/coco/, or a local
copy named by data.coco_annotations (that zip, or a folder holding instances_train2017.json and
instances_val2017.json, directly or under annotations/). COCO publishes no checksum for the zip, so its SHA-256
is recorded beside it on the first download (`<zip>.sha256`) and compared on every later run: a file that
changed since is an error, not other counts.

An image's count is its number of instance annotations with iscrowd 0. A crowd annotation (iscrowd 1) is one
region covering many objects of a class (a crowd of people), so it is neither one object nor a known number of
them: it is left out. An image without annotations counts 0.

The two JSON files hold about 0.5 GB, so they are parsed once into a compact count file, <raw>/coco/
object_counts.json ({"source_sha256": ..., "counts": {"<train2017|val2017>/<file name>": count}}), which is
rebuilt only when the source's checksum changes.
"""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path
from typing import IO

from zerovlm.config import DataConfig
from zerovlm.datasets.download import (
    DownloadError,
    FileRequest,
    fetch_file,
    policy_from_config,
    sha256_as_first_downloaded,
)
from zerovlm.datasets.sources import source_spec
from zerovlm.io import ZeroVLMError, read_json, sha256_files, write_json

FOLDER = "coco"  # under the raw folder, beside the COCO images
COUNTS_FILE = "object_counts.json"
SPLITS = ("train2017", "val2017")


def _member(split: str) -> str:
    return f"instances_{split}.json"


def count_objects(stream: IO[bytes], where: str, split: str) -> dict[str, int]:
    """'<split>/<file name>' -> non-crowd instances, from one instances_<split>.json."""
    try:
        data = json.load(stream)
        names = {image["id"]: image["file_name"] for image in data["images"]}
        counts = Counter(a["image_id"] for a in data["annotations"] if not a.get("iscrowd", 0))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ZeroVLMError(f"{where}: not JSON ({error}); replace the file with the official one") from None
    except (KeyError, TypeError) as error:
        raise ZeroVLMError(
            f"{where}: not a COCO instances file (no {error} in its images or annotations); replace it with the "
            f"official one"
        ) from None
    return {f"{split}/{name}": counts.get(image_id, 0) for image_id, name in names.items()}


def _from_zip(path: Path) -> dict[str, int]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ZeroVLMError(f"{path}: not a zip file; replace it with annotations_trainval2017.zip") from None
    with archive:
        counts = {}
        for split in SPLITS:
            member = f"annotations/{_member(split)}"
            if member not in archive.namelist():
                raise ZeroVLMError(f"{path}: no {member} in the archive; use COCO's annotations_trainval2017.zip")
            with archive.open(member) as stream:
                counts.update(count_objects(stream, f"{path}:{member}", split))
    return counts


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for split in SPLITS:
        candidates = [folder / _member(split), folder / "annotations" / _member(split)]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise ZeroVLMError(
                f"data.coco_annotations={folder}: no {_member(split)} there or under annotations/; give the folder "
                f"of the extracted annotations_trainval2017.zip, or the zip itself"
            )
        files.append(found)
    return files


def _recorded_download(cfg: DataConfig, raw_dir: Path) -> Path:
    """The official zip in the raw folder, fetched on first use, its SHA-256 recorded then and checked after."""
    spec = source_spec("coco")
    url = cfg.coco_annotations_url or spec["annotations_url"]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "annotations.zip"
    request = FileRequest(url=url, relative=f"{FOLDER}/{name}", kind="archive")
    try:
        path = fetch_file(request, raw_dir, policy_from_config(cfg))
    except DownloadError as error:  # the downloader's own hint names the dataset folders, not this file's param
        raise ZeroVLMError(
            f"COCO object counts: {str(error).split('; download it on', 1)[0]}; set data.coco_annotations to a local "
            f"annotations_trainval2017.zip (or its extracted folder), or data.coco_object_counts: false"
        ) from None
    sha256_as_first_downloaded(path)
    return path


def object_counts(cfg: DataConfig, raw_dir: Path) -> tuple[dict[str, int], dict[str, str]]:
    """('<train2017|val2017>/<file name>' -> objects, {source file: sha256}); see the module docstring."""
    local = Path(cfg.coco_annotations) if cfg.coco_annotations else None
    if local is not None and not local.exists():
        raise ZeroVLMError(f"data.coco_annotations={local}: no such file or folder")
    if local is not None and local.is_dir():
        sources = _folder_files(local)
    else:
        sources = [local or _recorded_download(cfg, raw_dir)]
    checksums = {str(path.name): digest for path, digest in zip(sources, sha256_files(sources))}
    cache = raw_dir / FOLDER / COUNTS_FILE
    if cache.is_file():
        cached = read_json(cache, f"delete {cache} to rebuild it")
        if cached.get("source_sha256") == checksums:
            return cached["counts"], checksums
    if len(sources) == 1:
        counts = _from_zip(sources[0])
    else:
        counts = {}
        for split, path in zip(SPLITS, sources):
            with open(path, "rb") as stream:
                counts.update(count_objects(stream, str(path), split))
    write_json(cache, {"source_sha256": checksums, "counts": counts})
    return counts, checksums
