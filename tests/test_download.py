"""The downloader against a loopback HTTP server with injected faults (no network needed).

`LoopbackServer` is also used by the VSR and What'sUp tests (imported from this module).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from zerovlm.config import DataConfig
from zerovlm.datasets import download
from zerovlm.datasets.download import (
    DownloadError,
    FileRequest,
    Policy,
    SizeCaps,
    fetch_all,
    fetch_file,
    policy_from_config,
    verify_image,
)
from zerovlm.datasets.examples import store_image_file
from zerovlm.io import ZeroVLMError, image_as_rgb

STALL_LIMIT_SECONDS = 30.0  # a stalled response is released after this long at the latest
TRICKLE_LIMIT_SECONDS = 5.0  # a trickling response closes after this long at the latest
ENDLESS_LIMIT_BYTES = 32 << 20  # an "endless" body ends here, so that a downloader without a cap still stops
FAST = Policy(workers=4, retries=2, backoff_seconds=0.01, timeout_seconds=30.0)  # no test here times out


def jpeg_bytes(name: str, size=(48, 32), mode="RGB") -> bytes:
    """A small deterministic JPEG whose colour depends on `name`."""
    digest = hashlib.sha256(name.encode()).digest()
    buffer = io.BytesIO()
    Image.new(mode, size, tuple(digest[: len(mode)])).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class LoopbackServer:
    """http.server on 127.0.0.1 (port 0) with per-path routes and fault injection.

    A route is bytes (served with Range support) or a callable(handler, hits) doing its own response.
    `fallback(path)` may return bytes for paths without a route (e.g. generated COCO images).
    """

    def __init__(self):
        self.routes: dict[str, bytes | Callable] = {}
        self.fallback: Callable[[str], bytes | None] = lambda path: None
        self.hits: dict[str, int] = {}
        self.ranges: list[tuple[str, str]] = []
        self.in_flight = self.max_in_flight = 0
        self.delay_seconds = 0.0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                with server._lock:
                    server.hits[path] = server.hits.get(path, 0) + 1
                    hits = server.hits[path]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if self.headers.get("Range"):
                        server.ranges.append((path, self.headers["Range"]))
                try:
                    time.sleep(server.delay_seconds)
                finally:
                    # out of flight before the first byte of the answer: once a client has its answer, its next
                    # request may arrive before this thread would get back from writing it
                    with server._lock:
                        server.in_flight -= 1
                route = server.routes.get(path)
                if route is None:
                    route = server.fallback(path)
                if callable(route):
                    route(self, hits)
                elif route is None:
                    self.send_error(404)
                else:
                    send_bytes(self, route)

        return Handler


def send_bytes(handler: BaseHTTPRequestHandler, data: bytes, content_type="application/octet-stream"):
    start = 0
    header = handler.headers.get("Range", "")
    if header.startswith("bytes=") and header[6:].rstrip("-").isdigit():
        start = int(header[6:].rstrip("-"))
    handler.send_response(206 if start else 200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data) - start))
    handler.end_headers()
    handler.wfile.write(data[start:])


def fail_first(status: int, data: bytes, times: int = 1):
    def route(handler, hits):
        if hits <= times:
            handler.send_error(status)
        else:
            send_bytes(handler, data)

    return route


def drop_mid_body_once(data: bytes):
    """First request: promise the whole body, send half, close the connection."""

    def route(handler, hits):
        if hits > 1:
            return send_bytes(handler, data)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        handler.connection.shutdown(socket.SHUT_RDWR)
        handler.close_connection = True

    return route


def stall(server: LoopbackServer):
    """Headers and a few bytes, then nothing until the test ends (bounded by STALL_LIMIT_SECONDS)."""

    def route(handler, hits):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        server.release.wait(STALL_LIMIT_SECONDS)

    return route


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


PAYLOAD = bytes(range(256)) * 64


def test_a_file_is_fetched_once_and_never_again(server, tmp_path):
    server.routes["/a.bin"] = PAYLOAD
    request = FileRequest(f"{server.url}/a.bin", "x/a.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    path = fetch_file(request, tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD and path == tmp_path / "x/a.bin"
    fetch_file(request, tmp_path, FAST)
    fetch_all([request], tmp_path, FAST)
    assert server.hits["/a.bin"] == 1
    assert not list(tmp_path.rglob("*.part"))


def test_404_fails_at_once_naming_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.bin: HTTP 404"):
        fetch_file(FileRequest(f"{server.url}/missing.bin", "missing.bin"), tmp_path, FAST)
    assert server.hits["/missing.bin"] == 1
    assert not (tmp_path / "missing.bin").exists()


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retried_with_backoff(server, tmp_path, status):
    server.routes["/flaky.bin"] = fail_first(status, PAYLOAD, times=2)
    path = fetch_file(FileRequest(f"{server.url}/flaky.bin", "flaky.bin"), tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD and server.hits["/flaky.bin"] == 3


def test_retries_are_bounded(server, tmp_path):
    server.routes["/down.bin"] = fail_first(500, PAYLOAD, times=99)
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch_file(FileRequest(f"{server.url}/down.bin", "down.bin"), tmp_path, FAST)
    assert server.hits["/down.bin"] == FAST.retries + 1


def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.routes["/big.bin"] = drop_mid_body_once(PAYLOAD)
    path = fetch_file(FileRequest(f"{server.url}/big.bin", "big.bin"), tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD
    assert server.ranges == [("/big.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_a_wrong_checksum_is_an_error_and_leaves_nothing_that_looks_finished(server, tmp_path):
    server.routes["/a.bin"] = PAYLOAD
    request = FileRequest(f"{server.url}/a.bin", "a.bin", sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        fetch_file(request, tmp_path, FAST)
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_server_times_out_within_bounds(server, tmp_path):
    server.routes["/stall.bin"] = stall(server)
    policy = Policy(workers=1, retries=1, backoff_seconds=0.01, timeout_seconds=1.0)
    start = time.perf_counter()
    with pytest.raises(DownloadError):
        fetch_file(FileRequest(f"{server.url}/stall.bin", "stall.bin"), tmp_path, policy)
    assert time.perf_counter() - start < 10.0  # two 1 s timeouts, far below the 30 s stall
    deadline = time.monotonic() + 5  # a late-scheduled handler may count the second attempt after it gave up
    while server.hits.get("/stall.bin", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.hits["/stall.bin"] == 2
    assert not (tmp_path / "stall.bin").exists()


def test_a_partial_file_never_looks_finished(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:100])  # left by an interrupted run
    server.routes["/a.bin"] = PAYLOAD
    path = fetch_file(FileRequest(f"{server.url}/a.bin", "a.bin"), tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "a.bin.part").exists()


@pytest.mark.parametrize("name", ["../escape.jpg", "/etc/escape.jpg", "a/../../escape.jpg"])
def test_target_names_cannot_escape_the_root(server, tmp_path, name):
    root = tmp_path / "root"
    server.routes["/e.jpg"] = jpeg_bytes("e")
    done, failures = fetch_all([FileRequest(f"{server.url}/e.jpg", name, is_image=True)], root, FAST)
    assert not done and "unsafe file name" in failures[0].reason
    assert not list(tmp_path.rglob("escape.jpg")) and server.hits == {}


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/a.jpg", "gopher://x/y"])
def test_only_http_urls_are_fetched(tmp_path, url):
    with pytest.raises(DownloadError, match="only http"):
        fetch_file(FileRequest(url, "a.jpg"), tmp_path, FAST)


@pytest.mark.parametrize("target", ["ftp://127.0.0.1:{port}/etc/passwd", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_refused(server, tmp_path, target):
    with socket.socket() as listener:  # would see a connection if the ftp:// redirect were followed
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)

        def redirect(handler, hits):
            handler.send_response(302)
            handler.send_header("Location", target.format(port=listener.getsockname()[1]))
            handler.end_headers()

        server.routes["/r.jsonl"] = redirect
        with pytest.raises(DownloadError, match="only http"):
            fetch_file(FileRequest(f"{server.url}/r.jsonl", "r.jsonl"), tmp_path, FAST)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_http_is_followed(server, tmp_path):
    def redirect(handler, hits):
        handler.send_response(302)
        handler.send_header("Location", f"{server.url}/moved.bin")
        handler.end_headers()

    server.routes["/old.bin"], server.routes["/moved.bin"] = redirect, PAYLOAD
    path = fetch_file(FileRequest(f"{server.url}/old.bin", "moved.bin"), tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_a_bad_image_put_at_the_final_name_by_hand_is_an_error_naming_it(server, tmp_path, content):
    if content == "truncated":
        data = jpeg_bytes("t", size=(256, 256))
        content = data[: len(data) // 2]
    (tmp_path / "h.jpg").write_bytes(content)
    server.routes["/h.jpg"] = jpeg_bytes("h")
    done, failures = fetch_all([FileRequest(f"{server.url}/h.jpg", "h.jpg", is_image=True)], tmp_path, FAST)
    assert (
        not done
        and str(tmp_path / "h.jpg") in failures[0].reason
        and "delete it to fetch it again" in failures[0].reason
    )
    assert (tmp_path / "h.jpg").read_bytes() == content and server.hits == {}  # never replaced silently


def test_a_truncated_jpeg_is_rejected_and_not_kept(server, tmp_path):
    data = jpeg_bytes("t", size=(256, 256))
    server.routes["/t.jpg"] = data[: len(data) * 2 // 3]
    done, failures = fetch_all([FileRequest(f"{server.url}/t.jpg", "t.jpg", is_image=True)], tmp_path, FAST)
    assert not done and "not a readable image" in failures[0].reason
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_says_how_to_supply_the_file(tmp_path):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = Policy(workers=1, retries=0, timeout_seconds=1.0)
    with pytest.raises(DownloadError) as error:
        fetch_file(FileRequest(f"http://127.0.0.1:{port}/a.jsonl", "vsr/a.jsonl"), tmp_path, policy)
    message = str(error.value)
    assert f"http://127.0.0.1:{port}/a.jsonl" in message and str(tmp_path / "vsr/a.jsonl") in message
    assert "data.annotations_dir" in message


def test_workers_are_bounded_and_failures_are_summarised(server, tmp_path):
    server.delay_seconds = 0.05
    server.fallback = lambda path: jpeg_bytes(path) if path.startswith("/img/") else None
    requests = [FileRequest(f"{server.url}/img/{i}.jpg", f"img/{i}.jpg", is_image=True) for i in range(12)]
    requests.append(FileRequest(f"{server.url}/gone.jpg", "gone.jpg", is_image=True))
    done, failures = fetch_all(requests, tmp_path, Policy(workers=3, retries=0, timeout_seconds=10.0))
    assert len(done) == 12 and [f.request.relative for f in failures] == ["gone.jpg"]
    assert 1 < server.max_in_flight <= 3


def test_google_drive_confirmation_form_is_followed(server, tmp_path):
    def confirm_page(handler, hits):
        page = (
            b'<html><form id="download-form" action="/download" method="get">'
            b'<input type="hidden" name="id" value="FILE"><input type="hidden" name="confirm" value="t">'
            b"</form></html>"
        )
        send_bytes(handler, page, content_type="text/html; charset=utf-8")

    server.routes["/uc"] = confirm_page
    server.routes["/download"] = PAYLOAD
    request = FileRequest(f"{server.url}/uc?export=download&id=FILE", "w/f.tar.gz", follow_html_form=True)
    assert fetch_file(request, tmp_path, FAST).read_bytes() == PAYLOAD


def test_a_web_page_without_a_form_is_a_clear_error(server, tmp_path):
    server.routes["/uc"] = lambda handler, hits: send_bytes(handler, b"<html>Quota exceeded</html>", "text/html")
    with pytest.raises(DownloadError, match="web page, not the file"):
        fetch_file(FileRequest(f"{server.url}/uc?id=X", "x.json", follow_html_form=True), tmp_path, FAST)


# ---------------------------------------------------------------- image checks and modes
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png(Image.new("RGB", (64, 64))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels > 2 x 100: Pillow refuses
    with pytest.raises(DownloadError, match=r"more than 200 pixels; raise data.max_image_pixels"):
        verify_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # within Pillow's 2x margin: refused from the header
    with pytest.raises(DownloadError, match=r"64x64 pixels exceed 4000; raise data.max_image_pixels"):
        verify_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ZeroVLMError, match="guard is off"):
        verify_image(path)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        (lambda: Image.new("RGB", (4, 4), (0, 0, 255)).convert("P"), (0, 0, 255)),
        (lambda: Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
        (lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        (lambda: Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
    ],
)
def test_odd_modes_become_rgb(make, expected):
    converted = image_as_rgb(make())
    assert converted.mode == "RGB" and converted.getpixel((1, 1)) == expected


def test_rgb_jpeg_keeps_its_bytes_and_other_modes_become_png(tmp_path):
    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(jpeg_bytes("a"))
    cmyk = tmp_path / "c.jpg"
    cmyk.write_bytes(jpeg_bytes("c", mode="CMYK"))
    out = tmp_path / "out"
    image_id, image_file = store_image_file(out, jpeg)
    assert image_file == f"images/{image_id}.jpg" and (out / image_file).read_bytes() == jpeg.read_bytes()
    assert image_id == hashlib.sha256(jpeg.read_bytes()).hexdigest()[:16]
    _, cmyk_file = store_image_file(out, cmyk)
    with Image.open(out / cmyk_file) as stored:
        assert cmyk_file.endswith(".png") and stored.mode == "RGB"


def test_a_stale_partial_file_past_the_end_starts_over(server, tmp_path):
    (tmp_path / "a.bin.part").write_bytes(b"z" * (len(PAYLOAD) + 10))  # longer than the file: 416

    def range_aware(handler, hits):
        header = handler.headers.get("Range", "")
        if header and int(header[6:].rstrip("-")) >= len(PAYLOAD):
            return handler.send_error(416)
        send_bytes(handler, PAYLOAD)

    server.routes["/a.bin"] = range_aware
    path = fetch_file(FileRequest(f"{server.url}/a.bin", "a.bin"), tmp_path, FAST)
    assert path.read_bytes() == PAYLOAD and server.hits["/a.bin"] == 2


# ---------------------------------------------------------------- deadline, size caps, local disk
def trickle(server: LoopbackServer, data: bytes, interval_seconds=0.02):
    """Announce the whole body, then send a byte per interval: every read gets data, none times out."""

    def route(handler, hits):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        stop = time.monotonic() + TRICKLE_LIMIT_SECONDS
        for i in range(len(data)):
            if server.release.wait(interval_seconds) or time.monotonic() > stop:
                return
            try:
                handler.wfile.write(data[i : i + 1])
                handler.wfile.flush()
            except OSError:  # the client gave up
                return

    return route


def endless(handler, hits):
    """No Content-Length: the body lasts until the connection closes, which the server never does."""
    handler.send_response(200)
    handler.end_headers()
    try:
        for _ in range(ENDLESS_LIMIT_BYTES // len(PAYLOAD)):
            handler.wfile.write(PAYLOAD)
    except OSError:  # the client gave up
        pass


def test_a_trickling_server_is_cut_off_at_the_deadline_and_resumed_next_run(server, tmp_path):
    server.routes["/slow.bin"] = trickle(server, PAYLOAD)
    policy = Policy(workers=1, retries=2, backoff_seconds=0.01, timeout_seconds=5.0, deadline_seconds=1.0)
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"/slow.bin: not finished within data.download_deadline_seconds=1 "):
        fetch_file(FileRequest(f"{server.url}/slow.bin", "slow.bin"), tmp_path, policy)
    assert time.perf_counter() - start < 3.0 and server.hits["/slow.bin"] == 1  # not retried
    kept = (tmp_path / "slow.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD)
    server.routes["/slow.bin"] = PAYLOAD
    assert fetch_file(FileRequest(f"{server.url}/slow.bin", "slow.bin"), tmp_path, FAST).read_bytes() == PAYLOAD
    assert server.ranges == [("/slow.bin", f"bytes={kept}-")]


def test_back_off_never_runs_past_the_deadline(server, tmp_path):
    server.routes["/down.bin"] = fail_first(503, PAYLOAD, times=99)
    policy = Policy(workers=1, retries=5, backoff_seconds=0.4, deadline_seconds=1.0)  # waits 0.4, 0.8, ...
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"HTTP 503; not retried: .* data.download_deadline_seconds=1$"):
        fetch_file(FileRequest(f"{server.url}/down.bin", "down.bin"), tmp_path, policy)
    assert time.perf_counter() - start < 1.0 and server.hits["/down.bin"] == 2


CAPS = SizeCaps(annotation=1000, image=2000, archive=3000, checkpoint=4000)


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("annotation", {}),
        ("image", {"is_image": True}),
        ("archive", {"kind": "archive"}),
        ("checkpoint", {"kind": "checkpoint"}),
    ],
)
def test_an_endless_body_stops_at_the_size_cap_of_its_kind(server, tmp_path, kind, fields):
    server.routes["/endless"] = endless
    cap_mb = getattr(CAPS, kind) / 1e6
    with pytest.raises(DownloadError) as error:
        fetch_file(FileRequest(f"{server.url}/endless", "e.bin", **fields), tmp_path, Policy(max_bytes=CAPS))
    assert str(error.value) == (
        f"{server.url}/endless: larger than the {kind} size cap of {cap_mb:g} MB; if it "
        f"really is this big, raise data.download_max_mb.{kind}"
    )
    assert server.hits["/endless"] == 1 and list(tmp_path.iterdir()) == []


def test_a_content_length_over_the_cap_is_refused_before_writing(server, tmp_path, monkeypatch):
    server.routes["/big.bin"] = PAYLOAD
    opened = []
    monkeypatch.setattr(
        download, "open", lambda *args, **kwargs: opened.append(args) or open(*args, **kwargs), raising=False
    )
    with pytest.raises(DownloadError, match="larger than the annotation size cap of 0.001 MB"):
        fetch_file(FileRequest(f"{server.url}/big.bin", "big.bin"), tmp_path, Policy(max_bytes=CAPS))
    assert opened == [] and server.hits["/big.bin"] == 1 and list(tmp_path.iterdir()) == []


def _disk_with_free_bytes(monkeypatch, free: int) -> None:
    """Files the downloader writes share `free` bytes; a write past them fails with ENOSPC, as a full disk."""
    real_open = open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            nonlocal free
            self.file.write(data[:free])
            if len(data) > free:
                free = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            free -= len(data)
            return len(data)

    def disk_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        return FullDisk(file) if "w" in mode or "a" in mode else file

    monkeypatch.setattr(download, "open", disk_open, raising=False)


def test_disk_full_is_reported_as_such_and_not_retried(server, tmp_path, monkeypatch):
    server.routes["/a.bin"] = PAYLOAD
    _disk_with_free_bytes(monkeypatch, 5000)
    url = f"{server.url}/a.bin"
    with pytest.raises(
        DownloadError,
        match=re.escape(f"disk full in {tmp_path / 'x'} after writing 5000 bytes of {url}; free space there"),
    ) as error:
        fetch_file(FileRequest(url, "x/a.bin"), tmp_path, FAST)
    assert not error.value.retryable and server.hits["/a.bin"] == 1
    assert (tmp_path / "x/a.bin.part").stat().st_size == 5000  # resumed once there is room


def test_disk_full_stops_fetch_all_instead_of_failing_file_by_file(server, tmp_path, monkeypatch):
    server.fallback = lambda path: PAYLOAD
    _disk_with_free_bytes(monkeypatch, 5000)
    requests = [FileRequest(f"{server.url}/{i}.bin", f"{i}.bin") for i in range(8)]
    with pytest.raises(DownloadError, match="disk full"):
        fetch_all(requests, tmp_path, Policy(workers=1, retries=0))
    assert sum(server.hits.values()) < len(requests)


def test_a_stall_before_the_first_byte_leaves_no_empty_part_file(server, tmp_path):
    def headers_then_nothing(handler, hits):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.flush()
        server.release.wait(STALL_LIMIT_SECONDS)

    server.routes["/stall.bin"] = headers_then_nothing
    policy = Policy(workers=1, retries=1, backoff_seconds=0.01, timeout_seconds=0.5)
    with pytest.raises(DownloadError, match="connection lost"):
        fetch_file(FileRequest(f"{server.url}/stall.bin", "stall.bin"), tmp_path, policy)
    assert list(tmp_path.iterdir()) == []


def test_the_download_params_reach_the_policy_with_the_same_defaults():
    assert policy_from_config(DataConfig()) == Policy()  # conf's defaults and the library's agree
    policy = policy_from_config(DataConfig(download_deadline_seconds=5, download_max_mb={"checkpoint": 0.5}))
    assert policy.deadline_seconds == 5 and policy.max_bytes == SizeCaps(checkpoint=500_000)
    with pytest.raises(ValueError, match="use one of annotation, image, archive, checkpoint"):
        FileRequest("http://x/a", "a", kind="model")
