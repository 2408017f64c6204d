"""Atomic writes, safe paths, file hashing and image loading."""

import hashlib
import threading

import pytest
from PIL import Image

import zerovlm.io
from zerovlm.io import ZeroVLMError, atomic_path, load_rgb, read_jsonl, safe_join, sha256_files


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", [0, 1, 5])
def test_sha256_files_gives_each_files_digest_in_order_hashing_several_at_once(tmp_path, monkeypatch, count):
    paths = [tmp_path / f"f{i}" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(bytes([i]) * (1000 + i))
    both_first_files_in_flight = threading.Barrier(2, timeout=5)  # breaks, and fails the call, if hashed one by one
    hash_one = zerovlm.io.sha256_file

    def hash_meeting_the_other_first_file(path):
        if len(paths) > 1 and path in paths[:2]:
            both_first_files_in_flight.wait()
        return hash_one(path)

    monkeypatch.setattr(zerovlm.io, "sha256_file", hash_meeting_the_other_first_file)
    monkeypatch.setattr(zerovlm.io, "host_threads", lambda: 4)
    assert sha256_files(paths) == [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


@pytest.mark.parametrize("name", ["../x.png", "/etc/passwd", "a/../../x.png", "", "a\\b.png"])
def test_safe_join_refuses_escapes(tmp_path, name):
    with pytest.raises(ZeroVLMError, match="unsafe file name"):
        safe_join(tmp_path, name)


def test_safe_join_accepts_nested_names(tmp_path):
    assert safe_join(tmp_path, "images/a.png") == (tmp_path / "images/a.png").resolve()


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ZeroVLMError, match=r"x.jsonl:2: malformed JSON"):
        list(read_jsonl(path))


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "L", "I;16", "LA"])
def test_odd_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img.{'tif' if mode in ('CMYK', 'I;16') else 'png'}"
    Image.new(mode, (5, 5)).save(path)
    assert load_rgb(path).mode == "RGB"


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_corrupt_image_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ZeroVLMError, match="bad.jpg: not a readable image"):
        load_rgb(path, "example 3")


def test_an_image_over_pillows_limit_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2 x 100: Pillow refuses to read it
    with pytest.raises(ZeroVLMError, match=r"big\.png: not a readable image \(example 3\) \(Image size \(1600 pix"):
        load_rgb(path, "example 3")
