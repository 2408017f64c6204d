"""What each stage reads from outside the pipeline, as the `check` stage (zerovlm/pipeline/check.py) records it.

DVC sees params and the files a stage lists. Two inputs escape it:
- local dataset folders (`data.annotations_dir`, `data.images_dir`, per dataset under `datasets.<name>`):
  replacing an image would leave `prepare` "unchanged", and deleting its output would bring the old images
  back from the run-cache;
- hub ids: `llava-hf/llava-1.5-7b-hf` names whatever its repository holds today.

`check` runs first on every `dvc repro` (always_changed) and writes one small JSON file per consumer into
`out_dir` (data/inputs/); each consumer depends on its own file only, so a change re-runs exactly the stages
it affects, and a file whose bytes did not change re-runs nothing:
    models.json             constant: the tiny models are built from their params and code alone
    prepare-<dataset>.json  local annotation files by SHA-256 (every .json/.jsonl under annotations_dir; a
                            table's file, and every file of its image folder, `source: table`);
                            local images by (relative path, size, mtime_ns) of every file: stat only, so a
                            COCO folder of 123k images is listed in a few seconds (a file replaced by one
                            of the same size and mtime goes unseen). Downloaded or synthetic: constant
                            (downloads are pinned by URL and checksum in datasets/sources.yaml); VSR's
                            local COCO annotations (`data.coco_annotations`, a zip or folder) by stat.
    views.json, vlm-<name>.json   the model: {repo, revision, commit} for a hub id; {path} for a folder the
                            `models` stage builds (already a dependency); {path, files, bytes, stat_sha256}
                            for any other local folder, except a MiniGPT-4 manifest folder (below).

A folder holding a minigpt4.json (a model assembled from parts, zerovlm/vlm/minigpt4.py) is recorded by
content, never by mtime, so that every clone of the repository agrees: {path, manifest_sha256, parts}, where
`parts` gives vision_qformer and llm each as {repo, revision, commit} (a hub id, at the manifest's
"revisions" entry, default main, pinned like any hub id) or as a local folder: {path, files, bytes, sha256}
(every file's SHA-256) up to PART_CONTENT_MAX_BYTES (256 MiB) in all, above it by stat {path, files, bytes,
stat_sha256} as other local folders (hashing a 13 GB LLM would add tens of seconds to every `dvc repro`);
llama_proj as {gdrive: <file_id>} (its bytes are checked against the SHA-256 recorded on its first download)
or {path, sha256}. Part paths are as the manifest writes them, relative to its folder.

A hub revision (null: main) resolves to a commit: a 40-hex revision is itself; otherwise the entry of
models.lock (committed in git like a package lock); otherwise the hub (HfApi.model_info, or offline with
HF_HUB_OFFLINE=1 the local cache's refs/<revision>), and the answer is added to models.lock. Entries are
never dropped (switching profiles keeps the other profile's pins); `zerovlm lock --update` re-resolves.
The views and infer stages load the recorded commit (zerovlm/runtime.py `pin_revision`; for MiniGPT-4's hub
parts `pinned_part_revisions`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from zerovlm.config import dataset_config, load_params, parse_section, validate_all, vlm_config
from zerovlm.io import ZeroVLMError, atomic_path, files_hash, read_yaml_mapping, sha256_file, sha256_files, stable_hash
from zerovlm.vlm.model_files import (
    DEFAULT_REVISION,
    FILE_PART,
    GDRIVE_PREFIX,
    HUB_ID,
    MANIFEST,
    REPOSITORY_PARTS,
    read_manifest,
    single_file,
)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
ANNOTATION_SUFFIXES = (".json", ".jsonl")  # the annotation files of every supported source
PART_CONTENT_MAX_BYTES = 256 * 2**20  # a local MiniGPT-4 part folder up to this size is recorded by content
LOCK_HEADER = """\
# Hub models pinned to commits, written by the `check` stage (zerovlm/inputs.py). Commit this file like a
# package lock: `dvc repro` loads every hub id at the commit pinned here for its revision, on any machine.
# `zerovlm lock --update [NAME]` re-resolves deliberately. Keys: <org>--<name>--<revision>, with characters
# other than letters, digits, '-' and '_' as '_' (addressable as DVC params).
"""


# ---------------------------------------------------------------- local files
def _visible_files(root: Path) -> list[Path]:
    """Every file under `root` (following links), skipping dotfiles and dot-folders, in name order."""
    found = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [Path(folder, name) for name in names if not name.startswith(".")]
    return sorted(found)


def stat_manifest(path: Path) -> dict[str, Any]:
    """files, bytes, and one SHA-256 of every file's (relative path, size, mtime_ns): a file or a folder."""
    files = [path] if path.is_file() else _visible_files(path)
    entries = []
    for file in files:
        stat = file.stat()
        entries.append(
            (file.relative_to(path).as_posix() if file != path else file.name, stat.st_size, stat.st_mtime_ns)
        )
    return {
        "files": len(entries),
        "bytes": sum(size for _, size, _ in entries),
        "stat_sha256": stable_hash(entries, length=64),
    }


def content_manifest(path: Path) -> dict[str, Any]:
    """files, bytes, and one SHA-256 of every file's (relative path, SHA-256) in folder `path`."""
    files = _visible_files(path)
    return {
        "files": len(files),
        "bytes": sum(file.stat().st_size for file in files),
        "sha256": files_hash(files, path, length=64),
    }


def _local_path(value: str, key: str) -> Path:
    path = Path(value).expanduser()
    if not path.exists():
        raise ZeroVLMError(
            f"{key}: {value!r} not found (looked in {path.resolve()}); fix the path, or set it "
            f"to null to download the files"
        )
    return path


def dataset_inputs(params: dict, name: str) -> dict[str, Any]:
    """What prepare@<name> reads from outside the repository (None: downloaded, pinned, or rendered)."""
    cfg = dataset_config(params, name)
    if cfg.source == "synthetic":
        return {"annotations_dir": None, "images_dir": None}

    def key(field: str) -> str:  # the params key the value came from, for error messages
        return f"datasets.{name}.{field}" if field in params["datasets"][name] else f"data.{field}"

    if cfg.source == "table":  # by content, so that every clone of a repository holding the table agrees
        table = _local_path(cfg.path, key("path"))
        if not table.is_file():
            raise ZeroVLMError(f"{key('path')}: {cfg.path!r} is not a file; give the table's .jsonl or .csv file")
        folder = cfg.images_dir or str(table.parent)
        return {
            "path": {"path": cfg.path, "sha256": sha256_file(table)},
            "images_dir": {"path": folder, **content_manifest(_local_path(folder, key("images_dir")))},
        }

    annotations = None
    if cfg.annotations_dir:
        root = _local_path(cfg.annotations_dir, key("annotations_dir"))
        files = [f for f in ([root] if root.is_file() else _visible_files(root)) if f.suffix in ANNOTATION_SUFFIXES]
        if not files:
            raise ZeroVLMError(f"{key('annotations_dir')}: no .json or .jsonl file in {cfg.annotations_dir!r}")
        annotations = {
            "path": cfg.annotations_dir,
            "sha256": {
                (f.relative_to(root).as_posix() if f != root else f.name): digest
                for f, digest in zip(files, sha256_files(files))
            },
        }
    images = None
    if cfg.images_dir:
        images = {"path": cfg.images_dir, **stat_manifest(_local_path(cfg.images_dir, key("images_dir")))}
    found = {"annotations_dir": annotations, "images_dir": images}
    if cfg.source.startswith("vsr_") and cfg.coco_object_counts and cfg.coco_annotations:  # a zip or its folder
        coco = _local_path(cfg.coco_annotations, key("coco_annotations"))
        found["coco_annotations"] = {"path": cfg.coco_annotations, **stat_manifest(coco)}
    return found


# ---------------------------------------------------------------- models.lock
def lock_key(repo: str, revision: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{repo.replace('/', '--')}--{revision}")


def read_lock(path: Path) -> dict[str, dict[str, str]]:
    """The entries of models.lock ({} when there is none yet); a damaged entry is an error naming it."""
    if not path.is_file():
        return {}
    fix = "delete the entry (or the file) and run `zerovlm lock` to resolve it again"
    entries = read_yaml_mapping(path, "entries", fix)
    for key, entry in entries.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"repo", "revision", "commit"}
            or not COMMIT.match(str(entry["commit"]))
            or key != lock_key(str(entry["repo"]), str(entry["revision"]))
        ):
            raise ZeroVLMError(
                f"{path}: entry {key!r} must be {{repo, revision, commit (40 hex digits)}} under "
                f"the key <org>--<name>--<revision>; {fix}"
            )
    return entries


def write_lock(path: Path, entries: dict[str, dict[str, str]]) -> None:
    body = yaml.safe_dump(entries, sort_keys=True) if entries else "{}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(LOCK_HEADER + body)


def hub_commit(repo: str, revision: str) -> str:
    """The commit `revision` of hub repo `repo` names now: asked of the hub, or offline of the local cache."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HFValidationError, HTTPError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.file_download import repo_folder_name

    if constants.HF_HUB_OFFLINE:
        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else ""
        if not COMMIT.match(commit):
            raise ZeroVLMError(
                f"{repo} revision {revision!r}: offline (HF_HUB_OFFLINE=1) and neither models.lock nor "
                f"the hub cache ({ref}) knows its commit; run `zerovlm lock` where there is network "
                f"and commit models.lock, or set the revision to a commit held in the cache"
            )
        return commit
    try:
        return HfApi().model_info(repo, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ZeroVLMError(
            f"{repo} revision {revision!r}: no such repository or revision on the Hugging Face hub "
            f"(or it is private); check the model id and its revision"
        ) from None
    except (HTTPError, HFValidationError, OSError) as error:
        raise ZeroVLMError(
            f"{repo} revision {revision!r}: cannot ask the Hugging Face hub for its commit "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); retry "
            f"with network, or offline set HF_HUB_OFFLINE=1 to read the local cache"
        ) from None


def pinned_commit(repo: str, revision: str | None, lock: dict[str, dict[str, str]], update: bool = False) -> str:
    """The commit of (repo, revision): itself when a commit, else models.lock's entry (added when missing,
    replaced when `update`)."""
    revision = revision or DEFAULT_REVISION
    if COMMIT.match(revision):
        return revision
    key = lock_key(repo, revision)
    if update or key not in lock:
        lock[key] = {"repo": repo, "revision": revision, "commit": hub_commit(repo, revision)}
    return lock[key]["commit"]


# ---------------------------------------------------------------- models
def grid_models(params: dict) -> dict[str, tuple[str, str, str | None]]:
    """name -> (params key, model, revision) of every model the grid loads: `views` and each grid VLM."""
    views = parse_section("views", params["views"])
    models = {"views": ("views", views.model, views.revision)}
    for name in parse_section("grid", params["grid"]).vlms:
        cfg = vlm_config(params, name)
        models[name] = (f"vlms.{name}", cfg.model, cfg.revision)
    return models


def assembled_source(key: str, model: str, folder: Path, lock: dict, update: bool = False) -> dict[str, Any]:
    """The identity of a MiniGPT-4 manifest folder: {path, manifest_sha256, parts} (see the module docstring)."""
    manifest = read_manifest(folder, f"{key}.model")
    parts: dict[str, dict[str, Any]] = {}
    for part in REPOSITORY_PARTS:
        source, revision = manifest.repository(part)
        if revision is not None:
            parts[part] = {
                "repo": source,
                "revision": revision,
                "commit": pinned_commit(source, revision, lock, update),
            }
        else:
            stats = stat_manifest(Path(source))
            parts[part] = {
                "path": manifest.parts[part],
                **(stats if stats["bytes"] > PART_CONTENT_MAX_BYTES else content_manifest(Path(source))),
            }
    value = manifest.parts[FILE_PART]
    if value.startswith(GDRIVE_PREFIX):
        parts[FILE_PART] = {"gdrive": value.removeprefix(GDRIVE_PREFIX)}
    else:
        parts[FILE_PART] = {"path": value, "sha256": single_file(folder, value, manifest.where(FILE_PART))[1]}
    return {"path": model, "manifest_sha256": sha256_file(manifest.path), "parts": parts}


def model_source(
    key: str, model: str, revision: str | None, lock: dict, built_models: Path, update: bool = False
) -> dict[str, Any]:
    """The identity of a model: {repo, revision, commit}, {path} (built by the `models` stage),
    {path, manifest_sha256, parts} (a MiniGPT-4 manifest folder) or {path, files, bytes, stat_sha256} (another
    local folder)."""
    path = Path(model).expanduser()
    if path.resolve().is_relative_to(built_models.resolve()):
        return {"path": model}
    if (path / MANIFEST).is_file():
        return assembled_source(key, model, path, lock, update)
    if path.exists():
        return {"path": model, **stat_manifest(path)}
    if HUB_ID.match(model):
        return {
            "repo": model,
            "revision": revision or DEFAULT_REVISION,
            "commit": pinned_commit(model, revision, lock, update),
        }
    raise ZeroVLMError(
        f"{key}.model: {model!r} is neither a folder (looked in {path.resolve()}) nor a hub id "
        f"(org/name); build the tiny models with `zerovlm build-tiny-models`, or fix the name"
    )


# ---------------------------------------------------------------- `zerovlm lock`
def lock_models(params_path: Path, lock_path: Path, built_models: Path, names: list[str], update: bool) -> list[str]:
    """Pin the grid's hub models, and the hub parts of MiniGPT-4 manifests, in models.lock; `update` re-resolves
    `names` (every one when empty). Returns one line per model, or per vision_qformer and llm of a manifest
    (`name.part`): `name: repo@revision -> commit` or `name: local folder <path>`."""
    validate_all(params_path)
    models = grid_models(load_params(params_path))
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise ZeroVLMError(f"unknown model name(s) {unknown}; valid: {', '.join(models)} (views, and grid.vlms)")
    lock = read_lock(lock_path)
    lines = []
    for name, (key, model, revision) in models.items():
        source = model_source(key, model, revision, lock, built_models, update and (not names or name in names))
        entries = (
            {f"{name}.{part}": source["parts"][part] for part in REPOSITORY_PARTS}
            if "parts" in source
            else {name: source}
        )
        lines += [
            f"{label}: {entry['repo']}@{entry['revision']} -> {entry['commit']}"
            if "commit" in entry
            else f"{label}: local folder {entry['path']}"
            for label, entry in entries.items()
        ]
    write_lock(lock_path, lock)
    return lines
