"""The image shard store: round trips, resume after interruption or a full disk, publishing."""

import errno
import os
import tarfile
import threading

import pytest
from PIL import Image

from zerovlm.io import ZeroVLMError
from zerovlm.store import BackgroundWriter, ShardReader, ShardWriter, encode_png, publish


def _image(value):
    return Image.new("RGB", (4, 4), (value, value, value))


def test_round_trip_with_metadata(tmp_path):
    with ShardWriter(tmp_path / "s", shard_size=2) as writer:
        for i in range(5):
            writer.add(f"k{i}", _image(i), {"i": i})
    reader = ShardReader(tmp_path / "s")
    assert len(reader) == 5 and len(list((tmp_path / "s").glob("*.tar"))) == 3
    assert reader.image("k3").getpixel((0, 0)) == (3, 3, 3) and reader.metadata("k3")["i"] == 3


def _open_shards(folder) -> list[str]:
    """The shard files of `folder` this process holds open (Linux: /proc/self/fd)."""
    targets = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
    return [t for t in targets if t.startswith(str(folder.resolve())) and t.endswith(".tar")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc/self/fd to see open files")
def test_reader_as_context_manager_closes_its_shards_even_on_error(tmp_path):
    with ShardWriter(tmp_path / "s", shard_size=2) as writer:
        for i in range(5):
            writer.add(f"k{i}", _image(i))
    with ShardReader(tmp_path / "s") as reader:
        reader.png("k0"), reader.png("k4")
        assert len(_open_shards(tmp_path / "s")) == 2
    assert _open_shards(tmp_path / "s") == []
    with pytest.raises(ZeroVLMError), ShardReader(tmp_path / "s") as reader:
        reader.png("k2")
        reader.png("missing")
    assert _open_shards(tmp_path / "s") == []


def test_identical_input_gives_identical_bytes(tmp_path):
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, shard_size=2) as writer:
            for i in range(3):
                writer.add(f"k{i}", _image(i))
    assert (tmp_path / "a/shard-00000.tar").read_bytes() == (tmp_path / "b/shard-00000.tar").read_bytes()


def test_interrupted_writer_keeps_finished_shards_and_resumes(tmp_path):
    folder = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with ShardWriter(folder, shard_size=2) as writer:
            for i in range(3):
                writer.add(f"k{i}", _image(i))
            raise RuntimeError("killed")
    (folder / "shard-00001.tar").write_bytes(b"half a tar")  # a shard cut mid-write has no index
    writer = ShardWriter(folder, shard_size=2)
    assert "k1" in writer and "k2" not in writer
    writer.add("k2", _image(2))
    writer.close()
    assert sorted(ShardReader(folder).keys()) == ["k0", "k1", "k2"]


def test_a_killed_writers_temporary_files_are_not_published(tmp_path):
    with ShardWriter(tmp_path / "partial", shard_size=2) as writer:
        for i in range(2):
            writer.add(f"k{i}", _image(i))
    (tmp_path / "partial" / ".shard-00001.tar.x1y2.tmp").write_bytes(b"half a tar")  # SIGKILL mid-write
    publish([tmp_path / "partial"], tmp_path / "final", ["k0", "k1"])
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["shard-00000.jsonl", "shard-00000.tar"]


def test_publish_keeps_exactly_the_requested_keys(tmp_path):
    with ShardWriter(tmp_path / "partial", shard_size=2) as writer:
        for i in range(4):
            writer.add(f"k{i}", _image(i))
    publish([tmp_path / "partial"], tmp_path / "final", ["k3", "k1"])
    assert ShardReader(tmp_path / "final").keys() == ["k3", "k1"]


def test_publish_merges_parts_into_the_same_bytes_as_one_writer(tmp_path):
    keys = [f"k{i}" for i in range(5)]
    with ShardWriter(tmp_path / "one", shard_size=2) as writer:
        for i, key in enumerate(keys):
            writer.add(key, _image(i))
    for part, indices in (("a", [1, 3]), ("b", [4, 0, 2])):
        with ShardWriter(tmp_path / part, shard_size=2) as writer:
            for i in indices:
                writer.add(keys[i], _image(i))
    publish([tmp_path / "one"], tmp_path / "single", keys, shard_size=2)
    publish([tmp_path / "a", tmp_path / "b"], tmp_path / "merged", keys, shard_size=2)
    for name in ("shard-00000.tar", "shard-00001.jsonl", "shard-00002.tar"):
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "merged" / name).read_bytes()


def test_bad_key_and_missing_key_are_clear_errors(tmp_path):
    with pytest.raises(ZeroVLMError, match="invalid store key"):
        ShardWriter(tmp_path / "s").add("../escape", _image(0))
    with ShardWriter(tmp_path / "s") as writer:
        writer.add("k0", _image(0))
    with pytest.raises(ZeroVLMError, match="no image with key 'k9'"):
        ShardReader(tmp_path / "s").image("k9")


class _FullDisk:
    """A file on a full disk: every write fails as the kernel's does (ENOSPC, naming no file)."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)


def fill_disk_after(monkeypatch, finished_tars: int) -> None:
    """The disk fills up once `finished_tars` shard tars are written: writes to any later tar fail."""
    opened = []

    def open_tar(name, mode):
        opened.append(name)
        file = open(name, mode)
        return file if len(opened) <= finished_tars else _FullDisk(file)

    monkeypatch.setattr(tarfile, "bltn_open", open_tar)


def test_a_full_disk_names_the_shard_and_keeps_the_finished_ones(tmp_path, monkeypatch):
    folder = tmp_path / "s"
    fill_disk_after(monkeypatch, finished_tars=1)
    writer = ShardWriter(folder, shard_size=2)
    with pytest.raises(OSError) as error:
        for i in range(4):
            writer.add(f"k{i}", _image(i))
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(folder / "shard-00001.tar")
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.jsonl", "shard-00000.tar"]  # no temporary
    monkeypatch.undo()
    with ShardWriter(folder, shard_size=2) as writer:
        assert "k1" in writer and "k2" not in writer
        for i in (2, 3):
            writer.add(f"k{i}", _image(i))
    assert ShardReader(folder).keys() == ["k0", "k1", "k2", "k3"]


def _write_background(folder, images, encoders=3, max_pending=2, encode=encode_png):
    with BackgroundWriter(ShardWriter(folder, shard_size=2), encoders, max_pending, encode) as store:
        for key, image in images:
            store.add(key, image, {"key_again": key})
    return store


def test_background_writer_stores_the_bytes_of_shard_writer_in_add_order(tmp_path):
    images = [(f"k{i}", Image.new("RGB", (16, 16), (i * 9, 255 - i, i))) for i in range(7)]
    with ShardWriter(tmp_path / "plain", shard_size=2) as writer:
        for key, image in images:
            writer.add(key, image, {"key_again": key})
    assert _write_background(tmp_path / "background", images).added == 7
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "background").iterdir()) and len(names) == 8
    for name in names:
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "background" / name).read_bytes(), name


def test_background_writer_raises_the_write_error_and_keeps_only_finished_shards(tmp_path):
    """A failed write (here a key written twice) is raised as it is, in the caller's thread; what came before it
    stays in finished shards, and no partial shard is made of the rest."""
    images = [(key, _image(i)) for i, key in enumerate(["a", "b", "c", "a", "d", "e"])]
    with pytest.raises(ZeroVLMError, match="key 'a' written twice"):
        _write_background(tmp_path / "s", images)
    assert ShardReader(tmp_path / "s").keys() == ["a", "b"] and len(list((tmp_path / "s").glob("*.tar"))) == 1


def test_background_writer_holds_at_most_max_pending_images(tmp_path):
    """`add` waits while max_pending images are not stored yet: memory stays bounded however slow the disk."""
    release = threading.Event()

    def slow_encode(image):
        release.wait(timeout=30)
        return encode_png(image)

    returned = []
    with BackgroundWriter(
        ShardWriter(tmp_path / "s", shard_size=8), encoders=4, max_pending=2, encode=slow_encode
    ) as store:
        adding = threading.Thread(target=lambda: [returned.append(store.add(f"k{i}", _image(i))) for i in range(3)])
        adding.start()
        adding.join(timeout=1.0)
        assert len(returned) == 2 and adding.is_alive()  # the third waits for a slot
        release.set()
        adding.join(timeout=30)
    assert len(returned) == 3 and len(ShardReader(tmp_path / "s")) == 3


def test_background_writer_encodes_off_the_callers_thread_and_raises_its_error(tmp_path):
    threads = []

    def failing_encode(image):
        threads.append(threading.current_thread())
        raise ValueError("cannot encode this one")

    with pytest.raises(ValueError, match="cannot encode this one"):
        _write_background(tmp_path / "s", [("a", _image(1))], encode=failing_encode)
    assert len(threads) == 1 and threading.current_thread() not in threads
    assert not list((tmp_path / "s").glob("*.tar"))
