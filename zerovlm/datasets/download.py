"""Fetching and verifying dataset files: bounded concurrency, retries, resume, checksums, image checks.

Guarantees:
- only http(s) URLs are fetched, redirects included; every target path is `safe_join`ed under the download root;
- a file appears at its final name only after it was verified (pinned SHA-256 where known, a full image
  decode for images), so a file at its final name is never fetched again (its checks are repeated on
  each run: a file put there by hand that fails them is an error naming it); bytes in flight live in
  `<name>.part`, which never looks finished and is resumed with an HTTP Range request when possible;
- timeouts, dropped connections, 429 and 5xx are retried with exponential back-off; 4xx are not;
- each file has a deadline over all its attempts and back-offs (`Policy.deadline_seconds`): a server that
  trickles bytes (so no single read times out) is cut off there and not retried, since the time is spent;
  the deadline is checked after every socket read, so it is passed by at most one read timeout;
- each kind of file has a size cap (`SizeCaps`): a larger Content-Length is refused before a byte is
  written, and a body without one stops at the cap, so no more than the cap ever reaches the disk;
  neither is retried;
- a failed local write (disk full, read-only folder) is reported as such, naming the folder and the bytes
  written; it is not retried, and stops `fetch_all` (every other file would fail the same way);
- no empty `.part` is left behind. A non-empty one is kept, and resumed, only where its bytes are good:
  after a dropped connection, a timeout, the deadline or a failed write; an oversized, mismatching or
  undecodable file is deleted;
- failures are collected into one summary, and an unreachable URL says how to supply the file locally.
Pillow's decompression-bomb guard stays on; odd image modes are converted to RGB explicitly.
"""

from __future__ import annotations

import dataclasses
import errno
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from zerovlm.io import ZeroVLMError, atomic_path, safe_join, sha256_file

USER_AGENT = "zerovlm-downloader/0.1"
CHUNK_BYTES = 1 << 16
PAGE_BYTES = 1 << 20  # a confirmation page is read up to this much
MB = 1_000_000  # the unit of the download_max_mb params
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
HOW_TO_SUPPLY = (
    "download it on a machine with network access and put it at {path}, "
    "or point data.annotations_dir / data.images_dir at a folder that already has it"
)


class DownloadError(ZeroVLMError):
    """A file could not be fetched or failed verification; `retryable` says whether to try again."""

    def __init__(self, message: str, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # the HTTP status, where there was one


class LocalWriteError(DownloadError):
    """Writing into the download folder failed (disk full, read-only): the fault is local, not the file's."""


@dataclass(frozen=True)
class SizeCaps:
    """The largest file accepted per kind of file, in bytes (the params give them in MB)."""

    annotation: int = 500 * MB  # VSR JSONL, What'sUp JSON: a few MB
    image: int = 100 * MB  # one COCO image: well under 1 MB
    archive: int = 20_000 * MB  # What'sUp image archives
    checkpoint: int = 20_000 * MB  # model files: about 0.1-1 GB


KINDS = tuple(field.name for field in dataclasses.fields(SizeCaps))


@dataclass(frozen=True)
class Policy:
    workers: int = 8
    retries: int = 3  # extra attempts after the first
    backoff_seconds: float = 1.0  # wait before the first retry; doubles each time
    timeout_seconds: float = 30.0  # per connect / per read (a stalled body fails after this long)
    deadline_seconds: float = 3600.0  # per file, over all attempts and back-offs
    max_bytes: SizeCaps = SizeCaps()
    params_section: str = "data"  # where these knobs live (download_deadline_seconds, download_max_mb.KIND),
    # named in errors

    def cap(self, request: FileRequest) -> int:
        return getattr(self.max_bytes, request.kind)


@dataclass(frozen=True)
class FileRequest:
    url: str
    relative: str  # target path under the download root
    sha256: str | None = None  # pinned sum: a mismatch is an error, and the file is not kept
    is_image: bool = False  # decode fully once before the file is accepted
    follow_html_form: bool = False  # Google Drive: a large file first answers with a confirmation form
    kind: str | None = None  # which size cap applies (KINDS); None: "image" if is_image else "annotation"

    def __post_init__(self):
        if self.kind is None:  # frozen: set once, here
            object.__setattr__(self, "kind", "image" if self.is_image else "annotation")
        if self.kind not in KINDS:
            raise ValueError(f"FileRequest.kind={self.kind!r}: use one of {', '.join(KINDS)}")


@dataclass(frozen=True)
class Failure:
    request: FileRequest
    reason: str


# ---------------------------------------------------------------- images
def sha256_as_first_downloaded(path: Path) -> str:
    """The SHA-256 of a file that has no published checksum, checked against the one recorded beside it (in
    `<name>.sha256`) on its first download, or recorded now: a file replaced later is refused, not used."""
    sidecar = path.with_name(f"{path.name}.sha256")
    actual = sha256_file(path)
    if not sidecar.is_file():  # the first download (or a file put there by hand): record what it is
        with atomic_path(sidecar) as tmp:
            tmp.write_text(actual + "\n")
    recorded = sidecar.read_text().strip()
    if actual != recorded:
        raise ZeroVLMError(
            f"{path}: SHA-256 {actual} differs from {recorded}, recorded in {sidecar.name} on its first download; "
            f"delete both files to download it again"
        )
    return actual


def verify_image(path: Path) -> None:
    """Decode the whole file once (truncation shows only on a full decode); bombs are refused."""
    if Image.MAX_IMAGE_PIXELS is None:
        raise ZeroVLMError("Pillow's decompression-bomb guard is off (PIL.Image.MAX_IMAGE_PIXELS is None)")
    limit = Image.MAX_IMAGE_PIXELS
    fix = "raise data.max_image_pixels to accept it"
    try:
        with Image.open(path) as image:
            if image.width * image.height > limit:  # from the header: such an image is never decoded
                raise DownloadError(f"{path.name}: refused: {image.width}x{image.height} pixels exceed {limit}; {fix}")
            image.load()
    except Image.DecompressionBombError:
        raise DownloadError(f"{path.name}: refused: more than {2 * limit} pixels; {fix}") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's truncated / corrupt image errors
        raise DownloadError(f"{path.name}: not a readable image ({error})") from None


# ---------------------------------------------------------------- one file
def check_url(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to fetch {url!r}: only http(s) URLs are allowed")
    return url


class _FormParser(HTMLParser):
    """Collects the first form's action and its hidden inputs (Google Drive's 'download anyway')."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("type") == "hidden" and attrs.get("name"):
            self.inputs[attrs["name"]] = attrs.get("value") or ""


def _confirmation_url(page: bytes, url: str) -> str:
    parser = _FormParser()
    parser.feed(page.decode("utf-8", errors="replace"))
    if not parser.action:
        raise DownloadError(f"{url} answered with a web page, not the file (quota exceeded or no access?)")
    action = urllib.parse.urljoin(url, parser.action)
    return check_url(f"{action}?{urllib.parse.urlencode(parser.inputs)}")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s): urllib's own handler also follows one to ftp://."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = urllib.parse.urljoin(req.full_url, headers.get("location") or headers.get("uri") or "")
        try:
            check_url(target)
        except DownloadError:
            fp.close()
            raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _http_only_opener() -> urllib.request.OpenerDirector:
    """urlopen's handlers minus ftp://, file:// and data: (a redirect cannot reach them either)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _http_only_opener()


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # checked by the callers
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        error.close()
        retryable = error.code in RETRYABLE_STATUS or (error.code == 416 and offset > 0)
        raise DownloadError(f"{url}: HTTP {error.code}", retryable=retryable, status=error.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not reach {url} ({reason})", retryable=True) from None


def _body(response, url: str) -> Iterator[bytes]:
    """The body as it arrives. read1 returns after one socket read, where read(n) waits for n bytes: a
    server trickling a byte at a time would keep read(n) busy far past any deadline."""
    while True:
        try:
            chunk = response.read1(CHUNK_BYTES)
        except (http.client.HTTPException, OSError) as error:  # incl. socket timeouts mid-body
            raise DownloadError(f"{url}: connection lost mid-body ({error!r})", retryable=True) from None
        if not chunk:
            return
        yield chunk


def _check_deadline(url: str, deadline: float, policy: Policy, received: int) -> None:
    if time.monotonic() > deadline:
        raise DownloadError(
            f"{url}: not finished within {policy.params_section}.download_deadline_seconds="
            f"{policy.deadline_seconds:g} ({received} bytes so far); raise it for a slow link "
            f"(a partial file is resumed on the next run)"
        )


def _too_large(request: FileRequest, url: str, part: Path, policy: Policy) -> DownloadError:
    part.unlink(missing_ok=True)  # an oversized file is never resumed from
    return DownloadError(
        f"{url}: larger than the {request.kind} size cap of {policy.cap(request) / MB:g} MB; if "
        f"it really is this big, raise {policy.params_section}.download_max_mb.{request.kind}"
    )


def _write_error(error: OSError, url: str, part: Path) -> LocalWriteError:
    size = part.stat().st_size if part.exists() else 0  # what reached the disk, a failed write's part included
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalWriteError(
            f"disk full in {part.parent} after writing {size} bytes of {url}; free space "
            f"there and run again (the partial file is resumed)"
        )
    return LocalWriteError(
        f"cannot write {part} after {size} bytes of {url} ({error.strerror or error}); "
        f"check that folder's permissions and free space"
    )


def _write_body(
    response, request: FileRequest, url: str, part: Path, start: int, policy: Policy, deadline: float
) -> int:
    """Stream the body into part, after `start` resumed bytes (0: from scratch); return part's size.
    The cap is checked before each write, so no more than the cap ever reaches the disk."""
    size = start
    try:
        with open(part, "ab" if start else "wb") as f:
            for chunk in _body(response, url):
                if size + len(chunk) > policy.cap(request):
                    break
                f.write(chunk)
                size += len(chunk)
                _check_deadline(url, deadline, policy, size)
            else:
                return size
    except OSError as error:  # opening, writing, flushing: the local disk (network errors are DownloadErrors)
        raise _write_error(error, url, part) from None
    raise _too_large(request, url, part, policy)


def _read_page(response, url: str, policy: Policy, deadline: float) -> bytes:
    page = bytearray()
    for chunk in _body(response, url):
        page += chunk
        _check_deadline(url, deadline, policy, len(page))
        if len(page) >= PAGE_BYTES:
            break
    return bytes(page)


def _stream_to_part(request: FileRequest, url: str, part: Path, policy: Policy, deadline: float) -> None:
    """One attempt: append to (or restart) the .part file; follow one confirmation form."""
    offset = part.stat().st_size if part.exists() else 0
    try:  # no single wait outlasts the deadline either
        response = _open(url, offset, max(min(policy.timeout_seconds, deadline - time.monotonic()), 0.01))
    except DownloadError as error:
        if error.status == 416:  # the range is past the end: the partial file is stale, start over
            part.unlink(missing_ok=True)
        raise
    with response:
        if request.follow_html_form and "text/html" in response.headers.get("Content-Type", ""):
            part.unlink(missing_ok=True)
            page = _read_page(response, url, policy, deadline)
            return _stream_to_part(
                dataclasses.replace(request, follow_html_form=False),
                _confirmation_url(page, url),
                part,
                policy,
                deadline,
            )
        start = offset if offset and response.status == 206 else 0
        length = response.headers.get("Content-Length", "")
        announced = int(length) if length.isdigit() else None
        if announced is not None and start + announced > policy.cap(request):
            raise _too_large(request, url, part, policy)
        size = _write_body(response, request, url, part, start, policy, deadline)
    # http.client's read returns b"" on a closed connection instead of raising IncompleteRead,
    # so a short body is caught here; the bytes kept in .part are resumed from next time.
    if announced is not None and size - start < announced:
        raise DownloadError(f"{url}: connection lost mid-body ({size - start} of {announced} bytes)", retryable=True)


def _verify(request: FileRequest, part: Path) -> None:
    if request.sha256:
        actual = sha256_file(part)
        if actual != request.sha256:
            part.unlink(missing_ok=True)  # wrong bytes are never resumed from
            raise DownloadError(
                f"{request.url}: SHA-256 mismatch (expected {request.sha256}, got {actual})", retryable=True
            )
    if request.is_image:
        try:
            verify_image(part)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise


def is_finished(request: FileRequest, path: Path) -> bool:
    """Whether a file at its final name is done: its pinned sum is re-checked (a mismatch fetches it
    again), and an image is decoded again, since a user may have put it there by hand (a bad one is an
    error naming the file, never silently replaced)."""
    if not path.is_file() or (request.sha256 is not None and sha256_file(path) != request.sha256):
        return False
    if request.is_image:
        try:
            verify_image(path)
        except DownloadError as error:
            raise DownloadError(f"{path}: {error}; replace it, or delete it to fetch it again") from None
    return True


def fetch_file(request: FileRequest, root: Path, policy: Policy) -> Path:
    """Fetch one file into root/request.relative unless it is already there; return its path."""
    target = safe_join(root, request.relative)
    if is_finished(request, target):
        return target
    check_url(request.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        return _attempts(request, target, part, policy)
    finally:  # an empty partial file holds nothing to resume
        if part.is_file() and part.stat().st_size == 0:
            part.unlink(missing_ok=True)


def _attempts(request: FileRequest, target: Path, part: Path, policy: Policy) -> Path:
    """The first attempt and the retries, with exponential back-off, all within the file's deadline."""
    deadline = time.monotonic() + policy.deadline_seconds
    for attempt in range(policy.retries + 1):
        try:
            _stream_to_part(request, request.url, part, policy, deadline)
            _verify(request, part)
            os.replace(part, target)
            return target
        except DownloadError as error:
            if not error.retryable or attempt == policy.retries:
                if "could not reach" in str(error):
                    raise DownloadError(f"{error}; {HOW_TO_SUPPLY.format(path=target)}") from None
                raise
            wait = policy.backoff_seconds * (2**attempt)
            if time.monotonic() + wait >= deadline:
                raise DownloadError(
                    f"{error}; not retried: the next attempt would start after "
                    f"{policy.params_section}.download_deadline_seconds="
                    f"{policy.deadline_seconds:g}"
                ) from None
            time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- many files
def fetch_all(
    requests: Iterable[FileRequest], root: Path, policy: Policy, description: str = "download"
) -> tuple[dict[str, Path], list[Failure]]:
    """Fetch concurrently with `policy.workers` threads; return (relative -> path, failures).
    A failed local write (LocalWriteError) is raised instead: it is the disk's fault, not one file's."""
    unique = {request.relative: request for request in requests}  # one fetch per target file
    done: dict[str, Path] = {}
    failures: list[Failure] = []
    todo = []
    for relative, request in unique.items():
        try:
            safe_join(root, relative)
        except ZeroVLMError as error:  # a hostile or corrupt name from an annotation file
            failures.append(Failure(request, str(error)))
            continue
        todo.append(request)  # a file already there is checked by fetch_file, in the pool's threads
    with (
        ThreadPoolExecutor(max_workers=policy.workers) as pool,
        tqdm(total=len(todo), desc=description, unit="file", mininterval=1.0) as progress,
    ):
        futures = {pool.submit(fetch_file, request, root, policy): request for request in todo}
        for future in as_completed(futures):
            request = futures[future]
            try:
                done[request.relative] = future.result()
            except LocalWriteError:  # the next files would fail the same way: stop, naming the cause
                for pending in futures:
                    pending.cancel()
                raise
            except ZeroVLMError as error:  # DownloadError and unsafe names: counted, not fatal here
                failures.append(Failure(request, str(error)))
            progress.update(1)
    failures.sort(key=lambda failure: failure.request.relative)
    return done, failures


def policy_from_config(cfg) -> Policy:
    """The download knobs of a DataConfig."""
    caps = {kind: round(mb * MB) for kind, mb in cfg.download_max_mb.model_dump().items()}
    return Policy(
        workers=cfg.download_workers,
        retries=cfg.download_retries,
        backoff_seconds=cfg.retry_backoff_seconds,
        timeout_seconds=cfg.timeout_seconds,
        deadline_seconds=cfg.download_deadline_seconds,
        max_bytes=SizeCaps(**caps),
    )
