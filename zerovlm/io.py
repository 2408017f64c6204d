"""File helpers shared by every stage: atomic writes, JSONL, safe paths, content hashes.

Every stage writes through `atomic_path` / `atomic_dir` so that an interrupted or failed run never
leaves an output that looks finished: the data goes to a temporary sibling first and is renamed into
place only once complete (rename is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from zerovlm.parallel import host_threads

if TYPE_CHECKING:  # Pillow is imported where images are decoded, not by every stage that imports io
    from PIL import Image


class ZeroVLMError(RuntimeError):
    """An error with a message meant for the user: it names the thing and the fix."""


@contextlib.contextmanager
def _reported_as(path: Path, tmp: Path | None) -> Iterator[None]:
    """An OSError of writing the output `path` names `path`, the name the user knows: a full disk names no
    file, and the temporary sibling (`tmp`; while it is created, tmp is None) has a random name."""
    try:
        yield
    except OSError as error:
        named = Path(os.fsdecode(error.filename)) if isinstance(error.filename, (str, bytes)) else None
        if (
            tmp is None
            or (named is None and error.errno in (errno.ENOSPC, errno.EDQUOT))
            or (named is not None and (named == tmp or tmp in named.parents))
        ):
            error.filename, error.filename2 = os.fspath(path), None
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _reported_as(path, None):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _reported_as(path, tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; it replaces `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _reported_as(path, None):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with _reported_as(path, tmp):
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The JSON document at `path`; a missing or malformed file is an error naming it and the `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZeroVLMError(f"{path}: not found; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ZeroVLMError(f"{path}: not readable JSON ({error}); {fix}") from None


def read_yaml_mapping(path: Path, what: str, fix: str) -> dict:
    """The YAML mapping at `path` ({} for an empty file); invalid YAML or another type is an error naming the
    file, what it should hold (`what`, e.g. "sections") and the `fix`."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ZeroVLMError(f"{path}: not valid YAML ({str(error).splitlines()[0]}); {fix}") from None
    if not isinstance(document, dict):
        raise ZeroVLMError(f"{path}: expected a mapping of {what}, got {type(document).__name__}; {fix}")
    return document


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write one JSON object per line, atomically; return the number of records."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    return count


def parse_jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, None) for each non-blank line of a JSONL file, or (line number, None, why)
    for a line that is not JSON: the caller decides whether a bad line stops it or is skipped."""
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line), None
            except json.JSONDecodeError as error:
                yield line_number, None, f"malformed JSON ({error.msg})"


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file; a malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ZeroVLMError(f"{path}: file not found (run the stage that produces it, e.g. `dvc repro`)")
    for line_number, record, problem in parse_jsonl_lines(path):
        if problem is not None:
            raise ZeroVLMError(f"{path}:{line_number}: {problem}")
        if not isinstance(record, dict):
            raise ZeroVLMError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
        yield record


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike]) -> list[str]:
    """sha256_file of each path, in the paths' order, several files at once: hashlib and file reads release the
    GIL, so a folder of weight shards hashes at several cores' speed rather than one's."""
    paths = list(paths)
    if len(paths) < 2:
        return [sha256_file(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), host_threads()), thread_name_prefix="sha256") as pool:
        return list(pool.map(sha256_file, paths))


def files_hash(files: Iterable[Path], root: Path, length: int = 16) -> str:
    """One hash of the files' names (relative to root) and contents, in name order."""
    files = sorted(files)
    return stable_hash(
        [(p.relative_to(root).as_posix(), digest) for p, digest in zip(files, sha256_files(files))], length=length
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-serialisable object, independent of dict key order."""
    payload = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """Join a name taken from data (an annotation file, an index) under `root`, refusing escapes.

    Absolute paths, `..` components and symlinks that lead outside `root` are rejected, so that a
    hostile or corrupt annotation can never make a stage write or read outside its data folder.
    """
    root = Path(root).resolve()
    if not relative or Path(relative).is_absolute() or "\\" in relative:
        raise ZeroVLMError(f"unsafe file name {relative!r}: expected a relative path inside {root}")
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ZeroVLMError(f"unsafe file name {relative!r}: it points outside {root}")
    return candidate


def image_as_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Convert any mode to 8-bit RGB explicitly: alpha is composited on white, CMYK / palette /
    16-bit / float go through Pillow's documented conversions."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grey: scale to 0..255 (a plain convert("L") clips everything above 255).
        extrema = image.getextrema()
        high = max(float(extrema[1]), 1.0)
        grey = image.point(lambda value: value * (255.0 / high)).convert("L")
        return grey.convert("RGB")
    if image.mode in ("CMYK", "P", "L", "1", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise ZeroVLMError(f"{name}: unsupported image mode {image.mode!r}")


def load_rgb(path: str | os.PathLike, context: str = "") -> Image.Image:
    """Decode an image fully and return it as RGB (`image_as_rgb`); a missing or corrupt file is a clear
    error. Pillow's decompression-bomb guard stays on: prepared images are within it (data.max_image_pixels
    is at most Pillow's default limit), so only a file replaced by hand can meet it."""
    from PIL import Image, UnidentifiedImageError

    where = f" ({context})" if context else ""
    try:
        with Image.open(path) as image:
            image.load()
            return image_as_rgb(image, str(path))
    except FileNotFoundError:
        raise ZeroVLMError(f"{path}: image file not found{where}; re-run the prepare stage") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ZeroVLMError(
            f"{path}: not a readable image{where} ({error}); replace or remove the file and re-run the prepare stage"
        ) from None


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Set Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS) to `max_pixels` for the block,
    with its warning silenced; restore both afterwards.

    Pillow warns above its limit and refuses twice the limit before decoding a pixel. The caller refuses
    every image above `max_pixels` itself, by name (prepare's image checks), so the warning would only
    repeat that; Pillow's refusal stays as the backstop for a decode that comes first (a download's
    verification). Process-wide, like the setting itself: not for concurrent blocks with other limits.
    """
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
