"""Where the parts of an assembled model come from: a local path, a Hugging Face hub repository, or a
Google Drive file (`gdrive:<file_id>`) fetched once into the zerovlm cache.

The cache is `$ZEROVLM_CACHE` (default `~/.cache/zerovlm`), outside git and DVC. A Drive file lives at
`gdrive/<file_id>` beside `gdrive/<file_id>.sha256`, its SHA-256 recorded when it was first downloaded
and compared on every later load: a file that changed since, on disk or upstream when fetched again, is
an error instead of other weights. Downloads go through zerovlm.datasets.download (retries with
back-off, resume of an interrupted `.part`, Google Drive's confirmation page, http(s) only), one
process at a time per file (a lock beside it: data-parallel workers load the model together).

The download URL is the template `$ZEROVLM_GDRIVE_URL` with `{file_id}` (default: Drive's own
`uc?export=download` address), for a mirror or, in tests, a loopback server. It is an environment
variable rather than a param because it says where the bytes come from, never which bytes (the
recorded checksum does): changing it must not re-run a stage. Hub repositories come through
huggingface_hub's own cache (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT), at the revision the manifest gives
(`"revisions": {"llm": "<branch, tag or commit>"}`, default main) or the commit the check stage pinned.

The manifest (`minigpt4.json`, format in zerovlm/vlm/minigpt4.py) is read here, without torch, so that the
check stage (zerovlm/inputs.py) and the loader understand it alike.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from zerovlm.datasets.download import FileRequest, Policy, fetch_file, sha256_as_first_downloaded
from zerovlm.io import ZeroVLMError, read_json, sha256_file

CACHE_ENV = "ZEROVLM_CACHE"
GDRIVE_URL_ENV = "ZEROVLM_GDRIVE_URL"
DEFAULT_CACHE = Path("~/.cache/zerovlm")
DEFAULT_GDRIVE_URL = "https://drive.google.com/uc?export=download&id={file_id}"
GDRIVE_PREFIX = "gdrive:"
DRIVE_FILE_ID = re.compile(r"^[A-Za-z0-9_-]{10,100}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
DEFAULT_REVISION = "main"
MANIFEST = "minigpt4.json"
REPOSITORY_PARTS = ("vision_qformer", "llm")  # a folder relative to the manifest, or a hub id
FILE_PART = "llama_proj"  # a file relative to the manifest, or gdrive:<file_id>
MANIFEST_KEYS = ("variant", *REPOSITORY_PARTS, FILE_PART, "revisions")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def drive_url(file_id: str) -> str:
    template = os.environ.get(GDRIVE_URL_ENV) or DEFAULT_GDRIVE_URL
    if template.count("{file_id}") != 1:
        raise ZeroVLMError(f"{GDRIVE_URL_ENV}={template!r}: the template must contain {{file_id}} once")
    return template.replace("{file_id}", file_id)


def fetch_drive_file(file_id: str, where: str) -> tuple[Path, str]:
    """(path, sha256) of a Google Drive file in the cache, downloaded on first use; see the module docstring."""
    from filelock import FileLock

    if not DRIVE_FILE_ID.match(file_id):
        raise ZeroVLMError(f"{where}: {file_id!r} is not a Google Drive file id (letters, digits, '-', '_')")
    relative = f"gdrive/{file_id}"
    path = cache_dir() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            fetch_file(
                FileRequest(drive_url(file_id), relative, follow_html_form=True, kind="checkpoint"),
                cache_dir(),
                Policy(),
            )  # the downloader's defaults (retries, timeouts, caps)
        actual = sha256_as_first_downloaded(path)
    return path, actual


def repository(base: Path, value: str, where: str) -> str:
    """A folder (relative to base) or a hub id, as `from_pretrained` takes it."""
    if (base / value).is_dir():
        return str(base / value)
    if value.startswith(GDRIVE_PREFIX) or not HUB_ID.match(value):
        raise ZeroVLMError(f"{where}: {value!r} is neither a folder under {base} nor a hub id (owner/name)")
    return value


def single_file(base: Path, value: str, where: str) -> tuple[Path, str]:
    """(path, sha256) of a file relative to base, or of `gdrive:<file_id>` (fetched once into the cache)."""
    if value.startswith(GDRIVE_PREFIX):
        return fetch_drive_file(value.removeprefix(GDRIVE_PREFIX), where)
    path = base / value
    if not path.is_file():
        raise ZeroVLMError(f"{where}: {path} not found; give a file relative to {base} or gdrive:<file_id>")
    return path, sha256_file(path)


def repository_file(source: str, filename: str, where: str, revision: str | None = None) -> Path | None:
    """A file of a local folder or of a hub repository at `revision` (None: main), through the hub cache; None
    when it has no such file."""
    if Path(source).is_dir():
        path = Path(source) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, revision=revision))
    except LocalEntryNotFoundError:  # offline (or the hub unreachable) and not in the local cache
        raise ZeroVLMError(
            f"{where}: cannot reach the Hugging Face hub for {source!r} at "
            f"{revision or DEFAULT_REVISION} ({filename}) and it is not in the local cache; download "
            f"it where there is network (HF_HOME), or name a local folder"
        ) from None
    except EntryNotFoundError:
        return None
    except OSError as error:  # unknown or gated repo: huggingface_hub's errors are OSErrors
        reason = str(error).splitlines()[0] if str(error) else ""
        raise ZeroVLMError(
            f"{where}: cannot fetch {filename} of hub repo {source!r} at "
            f"{revision or DEFAULT_REVISION} ({type(error).__name__}: {reason})"
        ) from None


@dataclass(frozen=True)
class Manifest:
    """A minigpt4.json: each part as written, and the revision of each hub part it names."""

    path: Path  # <model folder>/minigpt4.json
    variant: str | None  # as written (None: the backend's default); the backend checks it
    parts: dict[str, str]  # vision_qformer, llm, llama_proj
    revisions: dict[str, str]  # hub part -> branch, tag or commit; a hub part absent here: main

    def where(self, key: str) -> str:
        return f"{self.path}: {key}"

    def repository(self, part: str) -> tuple[str, str | None]:
        """(source, revision) of vision_qformer or llm: a folder (revision None) or a hub id and its revision."""
        source = repository(self.path.parent, self.parts[part], self.where(part))
        if Path(source).is_dir():
            return source, None
        return source, self.revisions.get(part, DEFAULT_REVISION)


def read_manifest(folder: Path, key: str) -> Manifest:
    """The manifest of model folder `folder` (the params key `key` named it), checked key by key."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ZeroVLMError(
            f"{key}: {path} not found; MiniGPT-4 needs a folder with {MANIFEST} naming "
            f"{', '.join(REPOSITORY_PARTS + (FILE_PART,))} (zerovlm/vlm/manifests/ has the paper's)"
        )
    fix = "rewrite it (zerovlm/vlm/manifests/ has examples)"
    values = read_json(path, fix)
    if not isinstance(values, dict):
        raise ZeroVLMError(f"{path}: expected a JSON object, got {type(values).__name__}; {fix}")
    unknown = sorted(set(values) - set(MANIFEST_KEYS))
    missing = [part for part in (*REPOSITORY_PARTS, FILE_PART) if part not in values]
    if unknown or missing:
        raise ZeroVLMError(
            f"{path}: {f'unknown keys {unknown}' if unknown else f'missing keys {missing}'}; "
            f"valid: {', '.join(MANIFEST_KEYS)} (variant and revisions optional)"
        )
    for name in (*REPOSITORY_PARTS, FILE_PART, "variant"):
        if name in values and not (isinstance(values[name], str) and values[name]):
            raise ZeroVLMError(f"{path}: {name} must be a non-empty string, got {values[name]!r}")
    revisions = values.get("revisions", {})
    if (
        not isinstance(revisions, dict)
        or not set(revisions) <= set(REPOSITORY_PARTS)
        or not all(isinstance(r, str) and r for r in revisions.values())
    ):
        raise ZeroVLMError(
            f"{path}: revisions must map {' or '.join(REPOSITORY_PARTS)} to a branch, tag or commit "
            f'(e.g. {{"llm": "main"}}), got {revisions!r}'
        )
    manifest = Manifest(path, values.get("variant"), {k: values[k] for k in (*REPOSITORY_PARTS, FILE_PART)}, revisions)
    for part in revisions:
        source, revision = manifest.repository(part)
        if revision is None:
            raise ZeroVLMError(
                f"{path}: revisions.{part} is {revisions[part]!r}, but {part} is the local folder "
                f"{source}, which has no revisions; remove revisions.{part}"
            )
    return manifest
