"""`zerovlm export-views`: PNGs of a shard store into a folder, and nowhere else."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from zerovlm import cli
from zerovlm.io import ZeroVLMError
from zerovlm.sharing import default_export_dir, export_views, shard_of_keys
from zerovlm.store import ShardWriter

IMAGES = ["aaaa", "bbbb", "cccc"]
VIEWS = ["left", "right"]


@pytest.fixture
def store(tmp_path):
    """3 images x 2 views, 4 views per shard: shard-00000 holds aaaa and bbbb, shard-00001 cccc."""
    folder = tmp_path / "data" / "views"
    with ShardWriter(folder, shard_size=4) as writer:
        for i, image_id in enumerate(IMAGES):
            for j, view in enumerate(VIEWS):
                writer.add(
                    f"{image_id}.{view}",
                    Image.new("RGB", (8, 8), (40 * i, 100 * j, 7)),
                    {"image_id": image_id, "view": view},
                )
    return folder


def test_exports_every_view_as_png_with_an_index(store, tmp_path):
    out = tmp_path / "data" / "exports" / "views"
    assert export_views(store, out) == 6
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{i}.{v}.png" for i in IMAGES for v in VIEWS] + ["index.jsonl"]
    )
    with Image.open(out / "cccc.right.png") as image:
        assert image.getpixel((0, 0)) == (80, 100, 7)
    records = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == [f"{i}.{v}" for i in IMAGES for v in VIEWS]


def test_exports_only_the_requested_images(store, tmp_path):
    out = tmp_path / "one"
    assert export_views(store, out, ["bbbb"]) == 2
    assert sorted(p.name for p in out.glob("*.png")) == ["bbbb.left.png", "bbbb.right.png"]


def test_unknown_image_id_is_an_error_and_writes_nothing(store, tmp_path):
    out = tmp_path / "none"
    with pytest.raises(ZeroVLMError, match="no views of image 'zzzz'.*aaaa"):
        export_views(store, out, ["zzzz"])
    assert not out.exists()


def test_refuses_a_non_empty_folder_unless_forced_and_never_deletes(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "aaaa.left.png").write_bytes(b"old")
    with pytest.raises(ZeroVLMError, match="not empty.*--force"):
        export_views(store, out)
    assert (out / "aaaa.left.png").read_bytes() == b"old"
    assert export_views(store, out, force=True) == 6
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "aaaa.left.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_symlink_in_the_folder_is_replaced_not_written_through(store, tmp_path):
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "aaaa.left.png")
    export_views(store, out, force=True)
    assert outside.read_bytes() == b"keep"
    assert not (out / "aaaa.left.png").is_symlink()


def test_refuses_to_write_into_the_store_itself(store):
    with pytest.raises(ZeroVLMError, match="inside the store"):
        export_views(store, store / "png")
    assert sorted(p.name for p in store.iterdir()) == [
        "shard-00000.jsonl",
        "shard-00000.tar",
        "shard-00001.jsonl",
        "shard-00001.tar",
    ]


def test_a_shard_not_pulled_yet_is_named_with_the_pull_command(store, tmp_path):
    """After `dvc pull data/views/shard-*.jsonl` only the indexes are there: name the tar to pull."""
    (store / "shard-00001.tar").unlink()
    assert shard_of_keys(store)["cccc.left"] == "shard-00001.tar"
    assert export_views(store, tmp_path / "a", ["aaaa"]) == 2  # its shard is present
    with pytest.raises(ZeroVLMError, match=r"dvc pull \S*shard-00001\.tar"):
        export_views(store, tmp_path / "c", ["cccc"])


def test_cli_defaults_to_a_folder_under_data_exports(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli.main(["export-views", "--image-id", "aaaa", "--image-id", "cccc"])
    assert default_export_dir("data/views") == tmp_path.joinpath("data", "exports", "views").relative_to(tmp_path)
    written = sorted(p.name for p in (tmp_path / "data/exports/views").glob("*.png"))
    assert written == ["aaaa.left.png", "aaaa.right.png", "cccc.left.png", "cccc.right.png"]
    assert "4 PNGs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export-views"])  # the folder is not empty now
    assert exit_info.value.code == 2
    assert "not empty" in capsys.readouterr().err


def test_a_folder_of_stores_is_refused_naming_them(tmp_path):
    (tmp_path / "stitched" / "vsr_random").mkdir(parents=True)
    with pytest.raises(ZeroVLMError, match=r"not a shard store.*--store .*stitched/vsr_random"):
        export_views(tmp_path / "stitched", tmp_path / "out")
    assert not (tmp_path / "out").exists()
