"""Fetching and verifying dataset files: bounded concurrency, retries, resume, checksums, image checks.

Guarantees:
- only http(s) URLs are fetched, redirects included; every target path is `safe_join`ed under the download root;
- a file appears at its final name only after it was verified (pinned SHA-256 where known, a full image
  decode for images), so a file at its final name is never fetched again (its checks are repeated on
  each run: a file put there by hand that fails them is an error naming it); bytes in flight live in
  `<name>.part`, which never looks finished and is resumed with an HTTP Range request when possible;
- timeouts, dropped connections, 429 and 5xx are retried with exponential back-off; 4xx are not;
- failures are collected into one summary, and an unreachable URL says how to supply the file locally.
Pillow's decompression-bomb guard stays on; odd image modes are converted to RGB explicitly.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable

from PIL import Image
from tqdm import tqdm

from zerovlm.io import ZeroVLMError, safe_join, sha256_file

USER_AGENT = "zerovlm-downloader/0.1"
CHUNK_BYTES = 1 << 16
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
HOW_TO_SUPPLY = ("download it on a machine with network access and put it at {path}, "
                 "or point data.annotations_dir / data.images_dir at a folder that already has it")


class DownloadError(ZeroVLMError):
    """A file could not be fetched or failed verification; `retryable` says whether to try again."""

    def __init__(self, message: str, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status  # the HTTP status, where there was one


@dataclass(frozen=True)
class Policy:
    workers: int = 8
    retries: int = 3               # extra attempts after the first
    backoff_seconds: float = 1.0   # wait before the first retry; doubles each time
    timeout_seconds: float = 30.0  # per connect / per read (a stalled body fails after this long)


@dataclass(frozen=True)
class FileRequest:
    url: str
    relative: str                  # target path under the download root
    sha256: str | None = None      # pinned sum: a mismatch is an error, and the file is not kept
    is_image: bool = False         # decode fully once before the file is accepted
    follow_html_form: bool = False  # Google Drive: a large file first answers with a confirmation form


@dataclass(frozen=True)
class Failure:
    request: FileRequest
    reason: str


# ---------------------------------------------------------------- images
def verify_image(path: Path) -> None:
    """Decode the whole file once (truncation shows only on a full decode); bombs are refused."""
    if Image.MAX_IMAGE_PIXELS is None:
        raise ZeroVLMError("Pillow's decompression-bomb guard is off (PIL.Image.MAX_IMAGE_PIXELS is None)")
    try:
        with Image.open(path) as image:
            image.load()
    except Image.DecompressionBombError as error:
        raise DownloadError(f"{path.name}: refused, too many pixels ({error})") from None
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
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


_OPENER = _http_only_opener()


def _open(url: str, offset: int, policy: Policy):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # checked by the callers
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return _OPENER.open(request, timeout=policy.timeout_seconds)
    except urllib.error.HTTPError as error:
        error.close()
        retryable = error.code in RETRYABLE_STATUS or (error.code == 416 and offset > 0)
        raise DownloadError(f"{url}: HTTP {error.code}", retryable=retryable, status=error.code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"could not reach {url} ({reason})", retryable=True) from None


def _stream_to_part(request: FileRequest, url: str, part: Path, policy: Policy) -> None:
    """One attempt: append to (or restart) the .part file; follow one confirmation form."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, policy)
    except DownloadError as error:
        if error.status == 416:  # the range is past the end: the partial file is stale, start over
            part.unlink(missing_ok=True)
        raise
    with response:
        if request.follow_html_form and "text/html" in response.headers.get("Content-Type", ""):
            part.unlink(missing_ok=True)
            return _stream_to_part(FileRequest(**{**request.__dict__, "follow_html_form": False}),
                                   _confirmation_url(response.read(1 << 20), url), part, policy)
        resumed = offset and response.status == 206
        expected = response.headers.get("Content-Length")
        received = 0
        with open(part, "ab" if resumed else "wb") as f:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
            except (http.client.HTTPException, OSError) as error:  # incl. socket timeouts mid-body
                raise DownloadError(f"{url}: connection lost mid-body ({error!r})", retryable=True) from None
        # http.client's read(n) returns b"" on a closed connection instead of raising IncompleteRead,
        # so a short body is caught here; the bytes kept in .part are resumed from next time.
        if expected is not None and expected.isdigit() and received < int(expected):
            raise DownloadError(f"{url}: connection lost mid-body ({received} of {expected} bytes)",
                                retryable=True)


def _verify(request: FileRequest, part: Path) -> None:
    if request.sha256:
        actual = sha256_file(part)
        if actual != request.sha256:
            part.unlink(missing_ok=True)  # wrong bytes are never resumed from
            raise DownloadError(f"{request.url}: SHA-256 mismatch (expected {request.sha256}, got {actual})",
                                retryable=True)
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
    for attempt in range(policy.retries + 1):
        try:
            _stream_to_part(request, request.url, part, policy)
            _verify(request, part)
            os.replace(part, target)
            return target
        except DownloadError as error:
            if not error.retryable or attempt == policy.retries:
                if "could not reach" in str(error):
                    raise DownloadError(f"{error}; {HOW_TO_SUPPLY.format(path=target)}") from None
                raise
            time.sleep(policy.backoff_seconds * (2 ** attempt))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- many files
def fetch_all(requests: Iterable[FileRequest], root: Path, policy: Policy,
              description: str = "download") -> tuple[dict[str, Path], list[Failure]]:
    """Fetch concurrently with `policy.workers` threads; return (relative -> path, failures)."""
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
    with ThreadPoolExecutor(max_workers=policy.workers) as pool, \
            tqdm(total=len(todo), desc=description, unit="file", mininterval=1.0) as progress:
        futures = {pool.submit(fetch_file, request, root, policy): request for request in todo}
        for future in as_completed(futures):
            request = futures[future]
            try:
                done[request.relative] = future.result()
            except ZeroVLMError as error:  # DownloadError and unsafe names: counted, not fatal here
                failures.append(Failure(request, str(error)))
            progress.update(1)
    failures.sort(key=lambda failure: failure.request.relative)
    return done, failures


def policy_from_config(cfg) -> Policy:
    """The download knobs of a DataConfig."""
    return Policy(workers=cfg.download_workers, retries=cfg.download_retries,
                  backoff_seconds=cfg.retry_backoff_seconds, timeout_seconds=cfg.timeout_seconds)
