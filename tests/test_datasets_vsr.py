"""VSR: the real annotation files (../shared/data/vsr) parsed and served over a loopback server."""

from __future__ import annotations

import io
import json
import re
import socket
import warnings
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.test_coco_counts import coco_zip
from tests.test_datasets_images import picture, picture_jpeg
from tests.test_download import LoopbackServer
from zerovlm.config import DataConfig
from zerovlm.datasets import vsr
from zerovlm.datasets.sources import BadRecords, source_spec
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, sha256_file
from zerovlm.pipeline import prepare

SHARED_VSR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vsr"
pytestmark = pytest.mark.skipif(
    not SHARED_VSR.is_dir(),
    reason=(f"{SHARED_VSR} is absent: the VSR tests need the shared copies of the upstream annotation files"),
)
SPLITS = [(folder, split) for folder in ("random", "zeroshot") for split in ("train", "dev", "test")]
DATASET = {"random": "vsr_random", "zeroshot": "vsr_zeroshot"}


@pytest.fixture
def server():
    with LoopbackServer() as running:

        def serve(path: str):
            parts = path.strip("/").split("/")
            if parts[0] == "vsr" and parts[2:4] == ["data", "splits"]:  # /vsr/<commit>/data/splits/<dir>/<f>
                file = SHARED_VSR / parts[4] / parts[5]
                return file.read_bytes() if file.is_file() else None
            if parts[0] == "coco" and len(parts) == 3:  # /coco/<train2017|val2017>/<name>.jpg
                return picture_jpeg(parts[2])
            return None

        running.fallback = serve
        yield running


def _config(server, **overrides) -> DataConfig:
    values = dict(
        source="vsr_random",
        split="test",
        retry_backoff_seconds=0.01,
        timeout_seconds=5.0,
        vsr_annotations_url=f"{server.url}/vsr/{{commit}}/data/splits/{{split_dir}}/{{split}}.jsonl",
        coco_images_url=f"{server.url}/coco",
        coco_object_counts=False,  # test_num_objects_come_from_the_coco_instances covers them
    )
    return DataConfig(**{**values, **overrides})


def test_num_objects_come_from_the_coco_instances(server, tmp_path):
    records = [json.loads(line) for line in (SHARED_VSR / "random/test.jsonl").read_text().splitlines()]
    by_folder: dict[str, dict[str, tuple[int, int]]] = {"train2017": {}, "val2017": {}}
    for record in records:  # a made-up count per image: 1..9 instances, and a crowd region on every third
        folder = record["image_link"].split("/")[-2]
        by_folder[folder][record["image"]] = (1 + int(record["image"][-7:-4]) % 9, int(record["image"][-5]) % 3 == 0)
    server.routes["/annotations/annotations_trainval2017.zip"] = coco_zip(by_folder["train2017"], by_folder["val2017"])
    cfg = _config(
        server,
        limit=40,
        coco_object_counts=True,
        coco_annotations_url=f"{server.url}/annotations/annotations_trainval2017.zip",
    )
    summary = prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
    examples = read_table(tmp_path / "prepared")
    assert len(examples) == 40
    for e in examples:
        assert e.num_objects == 1 + int(e.source["image"][-7:-4]) % 9
    assert set(summary["source_checksums"]) == {"random/test.jsonl", "coco/annotations_trainval2017.zip"}


@pytest.mark.parametrize("folder, split", SPLITS)
def test_pinned_sums_match_the_upstream_copies(folder, split):
    assert (
        sha256_file(SHARED_VSR / folder / f"{split}.jsonl") == source_spec("vsr")["sha256"][f"{folder}/{split}.jsonl"]
    )


@pytest.mark.parametrize("folder, split", SPLITS)
def test_parser_reads_every_record_of_every_split(folder, split):
    bad = BadRecords(skip_bad=False)
    drafts = vsr.parse_records(
        SHARED_VSR / folder / f"{split}.jsonl", DATASET[folder], split, bad, "http://images.cocodataset.org"
    )
    assert len(drafts) == source_spec("vsr")["counts"][folder][split]
    labels = Counter(d.fields["answer_index"] for d in drafts)
    assert set(labels) == {0, 1} and not bad.records
    first = drafts[0]
    assert first.fields["task"] == "true_false" and first.fields["options"] == ("yes", "no")
    assert first.image.url.startswith("http://images.cocodataset.org/") and first.image.url.endswith(".jpg")
    extra = {"random": "reference_frame", "zeroshot": "subj"}[folder]
    assert extra in first.fields["source"]


def test_test_splits_share_images_as_the_note_says():
    pairs = {}
    for folder in ("random", "zeroshot"):
        records = [json.loads(line) for line in (SHARED_VSR / folder / "test.jsonl").open()]
        pairs[folder] = {(r["image"], r["caption"]) for r in records}
        assert len({r["image"] for r in records}) == {"random": 1874, "zeroshot": 715}[folder]
    assert len(pairs["random"] & pairs["zeroshot"]) == 272


def test_download_select_and_store_with_a_stratified_limit(server, tmp_path):
    summary = prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), _config(server, limit=66))
    examples = read_table(tmp_path / "prepared")
    assert len(examples) == 66 and summary["available"] == 2195
    per_relation = Counter(e.relation for e in examples)
    assert max(per_relation.values()) <= 3 and len(per_relation) >= 40  # spread over relations
    assert summary["source_checksums"] == {"random/test.jsonl": source_spec("vsr")["sha256"]["random/test.jsonl"]}
    for e in examples:
        assert (tmp_path / "prepared" / e.image_file).read_bytes() == picture_jpeg(e.source["image"])
    assert (tmp_path / "raw/vsr/random/test.jsonl").is_file()
    assert list((tmp_path / "raw/coco").glob("*/*.jpg"))
    hits_before = sum(server.hits.values())
    again = prepare.run(prepare.Paths(out=tmp_path / "prepared2", raw=tmp_path / "raw"), _config(server, limit=66))
    assert sum(server.hits.values()) == hits_before  # resumable: nothing verified is fetched again
    assert (tmp_path / "prepared/examples.jsonl").read_bytes() == (tmp_path / "prepared2/examples.jsonl").read_bytes()
    assert again["examples"] == 66


def test_both_test_sets_in_full_share_stored_images(server, tmp_path):
    raw = tmp_path / "raw"
    prepare.run(prepare.Paths(out=tmp_path / "random", raw=raw), _config(server, download_workers=16))
    prepare.run(
        prepare.Paths(out=tmp_path / "zeroshot", raw=raw), _config(server, source="vsr_zeroshot", download_workers=16)
    )
    random_ids = {e.source["image"]: e.image_id for e in read_table(tmp_path / "random")}
    zeroshot = read_table(tmp_path / "zeroshot")
    assert len(random_ids) == 1874 and len(zeroshot) == 1222
    shared = [e for e in zeroshot if e.source["image"] in random_ids]
    assert shared and all(random_ids[e.source["image"]] == e.image_id for e in shared)


def test_a_404_image_is_strict_by_default_and_a_counted_skip_with_skip_bad(server, tmp_path):
    first = json.loads((SHARED_VSR / "random/dev.jsonl").open().readline())
    missing = f"/coco/{first['image_link'].split('/')[-2]}/{first['image']}"
    server.routes[missing] = lambda handler, hits: handler.send_error(404)
    with pytest.raises(ZeroVLMError, match=r"dev\.jsonl:1: field 'image_link'.*HTTP 404"):
        prepare.run(prepare.Paths(out=tmp_path / "strict", raw=tmp_path / "raw"), _config(server, split="dev"))
    assert not (tmp_path / "strict").exists()  # nothing half-written looks valid
    summary = prepare.run(
        prepare.Paths(out=tmp_path / "skip", raw=tmp_path / "raw"), _config(server, split="dev", skip_bad=True)
    )
    same_image = sum(
        1 for line in (SHARED_VSR / "random/dev.jsonl").open() if json.loads(line)["image"] == first["image"]
    )
    assert summary["skipped"]["count"] == same_image and summary["skipped"]["by_field"] == {"image_link": same_image}
    assert summary["examples"] == 1097 - same_image


def test_bad_records_name_file_line_and_field(tmp_path):
    lines = (SHARED_VSR / "random/dev.jsonl").read_text().splitlines()[:6]
    records = [json.loads(line) for line in lines]
    del records[1]["label"]
    records[2]["relation"] = "telepathically linked to"
    records[3]["image"] = "../../etc/passwd.jpg"
    records[4]["image_link"] = "file:///etc/passwd"
    text = [json.dumps(r) for r in records]
    text[5] = "{not json"
    path = tmp_path / "dev.jsonl"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ZeroVLMError, match=r"dev\.jsonl:2: field 'label': missing"):
        vsr.parse_records(path, "vsr_random", "dev", BadRecords(skip_bad=False), "http://x")
    bad = BadRecords(skip_bad=True)
    drafts = vsr.parse_records(path, "vsr_random", "dev", bad, "http://x")
    assert len(drafts) == 1
    assert [(b.line, b.field) for b in bad.records] == [
        (2, "label"),
        (3, "relation"),
        (4, "image"),
        (5, "image_link"),
        (6, None),
    ]


def test_local_folders_mean_no_download(tmp_path):
    coco = tmp_path / "coco"
    listed: dict[str, dict[str, tuple[int, int]]] = {"train2017": {}, "val2017": {}}
    for line in (SHARED_VSR / "zeroshot/dev.jsonl").open():
        record = json.loads(line)
        target = coco / record["image_link"].split("/")[-2] / record["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(picture_jpeg(record["image"]))
        listed[target.parent.name][record["image"]] = (2, 0)
    annotations = tmp_path / "annotations_trainval2017.zip"
    annotations.write_bytes(coco_zip(listed["train2017"], listed["val2017"]))
    with socket.socket() as probe:  # URLs point at a closed port: any fetch would fail
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cfg = DataConfig(
        source="vsr_zeroshot",
        split="dev",
        annotations_dir=str(SHARED_VSR),
        images_dir=str(coco),
        vsr_annotations_url=dead + "/{split}",
        coco_images_url=dead,
        coco_annotations=str(annotations),
        coco_annotations_url=dead + "/annotations.zip",
        download_retries=0,
    )
    summary = prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
    assert summary["examples"] == 340
    assert [p.name for p in (tmp_path / "raw").rglob("*") if p.is_file()] == ["object_counts.json"]  # parsed once


def test_offline_error_names_the_url_and_the_local_alternative(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cfg = DataConfig(
        source="vsr_random",
        vsr_annotations_url=dead + "/{split_dir}/{split}.jsonl",
        download_retries=0,
        timeout_seconds=1.0,
    )
    with pytest.raises(ZeroVLMError, match=rf"could not reach {dead}/random/test.jsonl.*data.annotations_dir"):
        prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _huge_png() -> bytes:
    """144 megapixels (1-bit, so 18 MB in memory): over twice data.max_image_pixels' default."""
    return _png_bytes(picture((12000, 12000), "huge", mode="1"))


BAD_IMAGES = {  # where the bad image comes from -> (its bytes, the check, what the error states)
    "download": (lambda: picture_jpeg("one", size=(1, 1)), "min_image_side_px", r"1x1 px: shorter side 1 < "),
    "raw folder by hand": (_huge_png, "max_image_pixels", r"more than 100000000 pixels"),
    "images_dir": (
        lambda: _png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0))),
        "blank_max_range",
        r"64x64 px, blank: every channel's max - min is 0",
    ),
}


@pytest.mark.parametrize("where", list(BAD_IMAGES))
def test_images_are_checked_wherever_they_come_from(server, tmp_path, where):
    """Strict: one line naming the record, the file, the check and its param. skip_bad: every caption of
    that image skipped and counted under the check."""
    make, check, stated = BAD_IMAGES[where]
    lines = [json.loads(line) for line in (SHARED_VSR / "zeroshot/dev.jsonl").open()]
    relative = f"{lines[0]['image_link'].split('/')[-2]}/{lines[0]['image']}"
    cfg = _config(server, source="vsr_zeroshot", split="dev")
    if where == "download":
        server.routes[f"/coco/{relative}"] = make()
    elif where == "raw folder by hand":
        (tmp_path / "raw/coco" / relative).parent.mkdir(parents=True)
        (tmp_path / "raw/coco" / relative).write_bytes(make())
    else:
        for record in lines:
            target = tmp_path / "coco" / record["image_link"].split("/")[-2] / record["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(picture_jpeg(record["image"]))
        (tmp_path / "coco" / relative).write_bytes(make())
        cfg = cfg.model_copy(update={"images_dir": str(tmp_path / "coco")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may pre-empt the check
        with pytest.raises(ZeroVLMError) as error:
            prepare.run(prepare.Paths(out=tmp_path / "strict", raw=tmp_path / "raw"), cfg)
        message = str(error.value)
        assert "\n" not in message and message.startswith("dev.jsonl:1: field 'image': ")
        assert re.search(rf"{re.escape(relative)}: {stated}.*data\.{check}", message), message
        summary = prepare.run(
            prepare.Paths(out=tmp_path / "skip", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
        )
    same_image = sum(1 for record in lines if record["image"] == lines[0]["image"])
    assert summary["skipped"]["count"] == same_image and summary["skipped"]["by_check"] == {check: same_image}
    assert summary["examples"] == len(lines) - same_image
