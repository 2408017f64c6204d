"""Image shard store: many images as a few tar files plus a JSONL index per shard.

DVC handles thousands of small files slowly (pushing or pulling 20,000 files of 4 KB took 28 s, one tar
of them 0.9 s, measured with a local remote), so view sets and stitched inputs are stored as shards:

    folder/shard-00000.tar    PNG members named <key>.png, in insertion order, deterministic headers
    folder/shard-00000.jsonl  one record per member: {"key", "member", **metadata}

A shard's JSONL is written (atomically) only after its tar is complete, so the JSONL marks a finished
shard. A writer opened on a folder that holds finished shards continues after them: this is how long
stages resume after an interruption without redoing finished images.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from zerovlm.io import ZeroVLMError, atomic_path, read_jsonl

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,90}$")
_SHARD_PATTERN = re.compile(r"^shard-(\d{5})\.jsonl$")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(png: bytes, what: str) -> Image.Image:
    """The RGB image of a stored PNG; `what` (the store and key) names it in the error a damaged store gets."""
    try:
        with Image.open(io.BytesIO(png)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ZeroVLMError(f"{what}: not a readable PNG ({error}); delete the store and re-run its stage") from None


def _check_key(key: str) -> str:
    if not _KEY_PATTERN.match(key):
        raise ZeroVLMError(f"invalid store key {key!r}: use letters, digits, '.', '_', '+', '-' (max 91)")
    return key


def _finished_shards(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("shard-*.jsonl") if _SHARD_PATTERN.match(p.name))


def _remove_unfinished(folder: Path) -> None:
    """Delete what a stopped writer left: a tar without its index, and atomic_path's temporary files
    (a killed process never reaches their clean-up)."""
    for orphan in folder.glob("shard-*.tar"):
        if not orphan.with_suffix(".jsonl").exists():
            orphan.unlink()
    for temporary in folder.glob(".shard-*.tmp"):
        temporary.unlink()


class ShardWriter:
    """Append images to a shard folder; every `shard_size` images become one finished shard."""

    def __init__(self, folder: str | os.PathLike, shard_size: int = 256):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        finished = _finished_shards(self.folder)
        self._next_index = len(finished)
        _remove_unfinished(self.folder)
        self._pending: list[tuple[str, bytes, dict]] = []
        self._keys = {record["key"] for shard in finished for record in read_jsonl(shard)}

    def __contains__(self, key: str) -> bool:
        return key in self._keys or any(key == k for k, _, _ in self._pending)

    def add(self, key: str, image: Image.Image, metadata: dict | None = None) -> None:
        self.add_png(key, encode_png(image), metadata)

    def add_png(self, key: str, png: bytes, metadata: dict | None = None) -> None:
        if key in self:
            raise ZeroVLMError(f"store {self.folder}: key {key!r} written twice")
        self._pending.append((_check_key(key), png, dict(metadata or {})))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the pending images as one finished shard (tar first, then its index)."""
        if not self._pending:
            return
        stem = f"shard-{self._next_index:05d}"
        tar_path = self.folder / f"{stem}.tar"
        records = []
        with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, png, metadata in self._pending:
                member = f"{key}.png"
                info = tarfile.TarInfo(member)
                info.size, info.mtime, info.mode = len(png), 0, 0o644  # fixed headers: same bytes every run
                tar.addfile(info, io.BytesIO(png))
                records.append({**metadata, "key": key, "member": member})
        with atomic_path(self.folder / f"{stem}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        self._keys.update(key for key, _, _ in self._pending)
        self._pending.clear()
        self._next_index += 1

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On error keep what is finished (resumable) but do not turn a partial batch into a shard.
        if exc_type is None:
            self.close()


class BackgroundWriter:
    """A ShardWriter fed from the caller's thread without waiting: `add` hands the image to `encoders` threads that
    run `encode` (encode_png, the bytes ShardWriter.add stores; benchmarks time others) and the store write to one
    writer thread (so the store keeps the order of `add`), and returns at once unless `max_pending` images are not
    stored yet (memory stays bounded). The caller (the GPU loop) keeps going while they work, on the cores they leave
    it (benchmarks/views_encoding.py measures what they cost it).

    The first error of an encoding or a write is raised, as it is, by the next `add` or by leaving the `with`
    block. On leaving the block everything added is stored; a pending partial shard is finished only when the
    block ends without error, as with ShardWriter (finished shards are what a resumed run keeps).
    """

    def __init__(self, writer: ShardWriter, encoders: int, max_pending: int, encode=encode_png):
        if encoders < 1 or max_pending < 1:
            raise ValueError(f"encoders and max_pending must be >= 1, got {encoders} and {max_pending}")
        self.writer, self.added, self._encode = writer, 0, encode  # added: images stored so far
        self._encoder = ThreadPoolExecutor(max_workers=encoders, thread_name_prefix="png")
        self._store = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._error: BaseException | None = None

    def add(self, key: str, image: Image.Image, metadata: dict | None = None) -> None:
        """Store `image` under `key` with `metadata`."""
        self._raise_error()
        self._slots.acquire()
        self._store.submit(self._write, key, metadata, self._encoder.submit(self._encode, image))

    def _write(self, key: str, metadata: dict | None, png: Future) -> None:
        try:
            if self._error is None:  # after a failure nothing more is stored: the store stays a prefix of `add`
                self.writer.add_png(key, png.result(), metadata)
                self.added += 1
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread, raised there
            self._error = error
        finally:
            self._slots.release()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._store.shutdown(wait=True)
        self._encoder.shutdown(wait=True)
        if exc_type is None:
            self._raise_error()
            self.writer.close()


class ShardReader:
    """Random access to the images of a shard folder by key. Only reading images opens shards; use it as a
    context manager (or call close()) to close them."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ZeroVLMError(f"{self.folder}: image store not found (run the stage that produces it)")
        self._records: dict[str, dict] = {}
        self._shard_of: dict[str, Path] = {}
        for index_path in _finished_shards(self.folder):
            for record in read_jsonl(index_path):
                self._records[record["key"]] = record
                self._shard_of[record["key"]] = index_path.with_suffix(".tar")
        self._open: dict[Path, tarfile.TarFile] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def keys(self) -> list[str]:
        return list(self._records)

    def metadata(self, key: str) -> dict:
        return self._records[self._require(key)]

    def png(self, key: str) -> bytes:
        shard = self._shard_of[self._require(key)]
        if shard not in self._open:
            self._open[shard] = tarfile.open(shard, "r")
        member = self._open[shard].extractfile(self._records[key]["member"])
        if member is None:
            raise ZeroVLMError(f"{shard}: member for {key!r} is missing; delete the folder and re-run")
        return member.read()

    def image(self, key: str) -> Image.Image:
        return decode_png(self.png(key), f"{self.folder}: {key}")

    def close(self) -> None:
        for tar in self._open.values():
            tar.close()
        self._open.clear()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require(self, key: str) -> str:
        if key not in self._records:
            raise ZeroVLMError(f"{self.folder}: no image with key {key!r}; re-run the stage that writes it")
        return key


def publish(
    partials: Sequence[str | os.PathLike], final: str | os.PathLike, keep: Iterable[str], shard_size: int = 256
) -> None:
    """Move finished partial stores to `final`, holding exactly the keys of `keep` in that order.

    One partial store that already holds exactly those keys in that order is renamed (cheap);
    otherwise (several processes' parts, or a resumed run whose selection changed) the images are
    copied, still encoded, into fresh shards in `keep` order, so the result does not depend on how
    the work was split.
    """
    final = Path(final)
    keep = list(dict.fromkeys(keep))
    with ExitStack() as open_readers:
        readers = [open_readers.enter_context(ShardReader(folder)) for folder in partials]
        source = {key: reader for reader in reversed(readers) for key in reader.keys()}
        missing = [key for key in keep if key not in source]
        if missing:
            raise ZeroVLMError(f"{len(missing)} images were never written (first: {missing[0]}); re-run the stage")
        if final.exists():
            shutil.rmtree(final)
        if len(readers) == 1 and readers[0].keys() == keep:  # no image was read, so no shard is open
            _remove_unfinished(readers[0].folder)
            os.replace(readers[0].folder, final)
            return
        staging = final.with_name(f".{final.name}.publish")
        shutil.rmtree(staging, ignore_errors=True)
        with ShardWriter(staging, shard_size) as writer:
            for key in keep:
                metadata = {k: v for k, v in source[key].metadata(key).items() if k not in ("key", "member")}
                writer.add_png(key, source[key].png(key), metadata)
    os.replace(staging, final)
