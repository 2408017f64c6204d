"""Sharing view sets: export a shard store's PNGs for looking at, and check a DVC remote's objects.

View sets travel between machines and repos through DVC remotes (docs/sharing.md). Two
things DVC does not do for us:

- `export_views`: a shard store (tar + JSONL, zerovlm/store.py) is fast to push and pull but not
  browsable; this writes the PNGs of all or some images into a plain folder, and only there.
- `check_remote`: `dvc push` decides what to upload by object *names* only, and once a directory's
  `.dir` manifest is on the remote it assumes every file the manifest lists is there too (checked on
  DVC 3.67.1). An object that was damaged or deleted on the remote therefore stays broken through any
  number of re-pushes. This re-hashes the remote objects of the pipeline's outputs (dvc.lock), names
  the bad ones and, with `repair=True`, deletes them and the manifests that list them, so that the
  next `dvc push` from a machine holding the good data uploads them again.

    zerovlm check-remote [STAGE ...] [-r REMOTE] [--repair]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from zerovlm.io import ZeroVLMError, atomic_path, read_jsonl, write_jsonl
from zerovlm.store import ShardReader

EXPORTS_DIR = Path("data/exports")
_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,90}")


def default_export_dir(store: str | Path) -> Path:
    """Where `export-views` writes when no --out is given: data/exports/<store folder name>."""
    return EXPORTS_DIR / Path(store).resolve().name


def shard_of_keys(store: str | Path) -> dict[str, str]:
    """key -> file name of the tar holding it, read from the store's small JSONL indexes alone.

    The indexes are enough to plan a granular pull: `dvc pull data/views/shard-00003.tar` fetches one
    shard of a stage output (DVC fetches the output's `.dir` manifest and that one object).
    """
    return {
        record["key"]: index.with_suffix(".tar").name
        for index in sorted(Path(store).glob("shard-*.jsonl"))
        for record in read_jsonl(index)
    }


def export_views(
    store: str | Path, out: str | Path, image_ids: Iterable[str] | None = None, force: bool = False
) -> int:
    """Write the PNGs (and an index.jsonl of their metadata) of a shard store into `out`.

    Writes only inside `out`: files are named `<key>.png` with keys checked by the store's key rules,
    each written to a temp file in `out` and renamed (a symlink already in `out` is replaced, never
    followed). `out` must be empty or absent unless `force`, which overwrites same-named files and
    deletes nothing. `image_ids` selects images (all views of each); an unknown id is an error.
    Returns the number of PNGs written.
    """
    store, out = Path(store), Path(out)
    with ShardReader(store) as reader:
        if not len(reader):
            subfolders = sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))
            hint = (
                f"; its subfolders: {', '.join(subfolders)} (e.g. --store {store / subfolders[0]})"
                if subfolders
                else ""
            )
            raise ZeroVLMError(f"{store}: not a shard store (no shard-*.jsonl){hint}")
        keys = _select(reader, store, image_ids)
        _check_out_dir(store, out, force)
        tar_of = shard_of_keys(store)
        missing = sorted({tar_of[key] for key in keys} - {p.name for p in store.glob("*.tar")})
        if missing:
            pulls = " ".join(str(store / name) for name in missing)
            raise ZeroVLMError(
                f"{store}: {len(missing)} shard(s) holding these views are not in the workspace; "
                f"fetch just them with `dvc pull {pulls}` (or all: `dvc pull {store}`)"
            )
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for key in keys:
            if not _SAFE_KEY.fullmatch(key):  # the store's key rule: never a path, never a dotfile
                raise ZeroVLMError(f"{store}: unsafe key {key!r} in the index; re-create the store")
            with atomic_path(out / f"{key}.png") as tmp:  # rename replaces a symlink, never follows it
                tmp.write_bytes(reader.png(key))
            records.append(reader.metadata(key))
        write_jsonl(out / "index.jsonl", records)
        return len(keys)


def _select(reader: ShardReader, store: Path, image_ids: Iterable[str] | None) -> list[str]:
    keys = reader.keys()
    if not image_ids:
        return keys
    wanted = set(image_ids)
    image_of = {key: reader.metadata(key).get("image_id", key.split(".")[0]) for key in keys}
    known = set(image_of.values())
    if unknown := sorted(wanted - known):
        raise ZeroVLMError(
            f"{store}: no views of image {unknown[0]!r} ({len(known)} images, e.g. "
            f"{', '.join(sorted(known)[:3])}); `head -1 {store}/shard-00000.jsonl` shows the ids"
        )
    return [key for key in keys if image_of[key] in wanted]


def _check_out_dir(store: Path, out: Path, force: bool) -> None:
    resolved_out, resolved_store = out.resolve(), store.resolve()
    if resolved_out == resolved_store or resolved_store in resolved_out.parents:
        raise ZeroVLMError(
            f"--out {out} is inside the store {store}: that would change a DVC-tracked "
            f"output; choose another folder (default: {default_export_dir(store)})"
        )
    if out.exists() and not out.is_dir():
        raise ZeroVLMError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ZeroVLMError(
            f"--out {out} is not empty; choose an empty folder or pass --force to "
            f"overwrite same-named files (nothing else is deleted)"
        )


@dataclass(frozen=True)
class RemoteProblem:
    """One object of a pipeline output that the remote lacks or holds with the wrong content."""

    kind: str  # "missing" or "corrupt"
    path: str  # the workspace path it stands for, e.g. data/views/shard-00000.tar
    oid: str  # its md5 (DVC's object name; ".dir" marks a directory manifest)
    remote_path: str
    actual_md5: str | None = None  # what the remote object hashes to (corrupt only)

    def __str__(self) -> str:
        found = f" (its content hashes to {self.actual_md5})" if self.actual_md5 else ""
        return f"{self.kind}: {self.path} = object {self.oid} at {self.remote_path}{found}"


def check_remote(
    repo_root: str | Path = ".", stages: Iterable[str] | None = None, remote: str | None = None, repair: bool = False
) -> list[RemoteProblem]:
    """Re-hash the remote objects of the cached outputs that dvc.lock records for `stages` (default all).

    Every object is read once from the remote (a full download for a cloud remote). A manifest is
    trusted only after its own hash matches its name, which dvc.lock (in git) pins. With `repair`,
    corrupt objects and every manifest listing a missing or corrupt object are deleted from the remote;
    then `dvc push` (where the good data is cached) uploads them again. Run-cache entries are not checked.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        repo = Repo(str(repo_root))
    except DvcException as error:  # not a DVC repository
        raise ZeroVLMError(f"{repo_root}: {error}") from None
    with repo:
        try:
            odb = repo.cloud.get_remote_odb(remote, "check-remote")
        except DvcException as error:  # no such remote, no default remote, missing dvc-ssh/dvc-s3 ...
            raise ZeroVLMError(str(error)) from None
        wanted = set(stages or [])
        known = {name for stage in repo.index.stages for name in (stage.name, stage.name.split("@")[0])}
        if wanted - known:
            raise ZeroVLMError(f"unknown stage(s) {sorted(wanted - known)}; valid: {', '.join(sorted(known))}")
        problems, broken_manifests = [], []
        for stage in repo.index.stages:
            if wanted and not {stage.name, stage.name.split("@")[0]} & wanted:  # `infer` = every infer@...
                continue
            for out in stage.outs:
                if not out.use_cache or not out.hash_info or not out.hash_info.value:
                    continue  # not cached (metrics kept in git) or never run: nothing on a remote
                if out.hash_info.name != "md5":
                    raise ZeroVLMError(
                        f"{out.def_path}: recorded by DVC 2 ({out.hash_info.name}), which this "
                        f"check cannot re-hash; `dvc cache migrate --dvc-files` first"
                    )
                found = _check_tree(odb, out.def_path, out.hash_info.value)
                problems += found
                if out.hash_info.isdir and found:
                    broken_manifests.append(odb.oid_to_path(out.hash_info.value))
        if repair:
            for path in {p.remote_path for p in problems if p.kind == "corrupt"} | set(broken_manifests):
                if odb.fs.exists(path):
                    odb.fs.remove(path)
        return problems


def _check_tree(odb, path: str, oid: str) -> list[RemoteProblem]:
    """Problems of one output: the object itself and, for a directory, its manifest's entries."""
    problem = _check_object(odb, path, oid)
    if problem is not None or not oid.endswith(".dir"):
        return [problem] if problem else []
    with odb.fs.open(odb.oid_to_path(oid), "rb") as f:
        entries = json.loads(f.read())
    return [p for entry in entries if (p := _check_object(odb, f"{path}/{entry['relpath']}", entry["md5"])) is not None]


def _check_object(odb, path: str, oid: str) -> RemoteProblem | None:
    remote_path = odb.oid_to_path(oid)
    if not odb.fs.exists(remote_path):
        return RemoteProblem("missing", path, oid, remote_path)
    digest = hashlib.md5()
    with odb.fs.open(remote_path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    expected = oid.removesuffix(".dir")
    if digest.hexdigest() != expected:
        return RemoteProblem("corrupt", path, oid, remote_path, digest.hexdigest())
    return None
