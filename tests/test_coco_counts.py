"""COCO 2017 object counts: a tiny annotations_trainval2017.zip in the real format, served over loopback."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from tests.test_download import LoopbackServer
from zerovlm.config import DataConfig
from zerovlm.datasets import coco_counts
from zerovlm.datasets.sources import BadRecords, Draft, ImageRef
from zerovlm.datasets.vsr import with_object_counts
from zerovlm.io import ZeroVLMError

ZIP_PATH = "/annotations/annotations_trainval2017.zip"


def instances_json(counts: dict[str, tuple[int, int]]) -> bytes:
    """An instances_<split>.json as COCO ships it: file name -> (instances, crowd regions)."""
    images, annotations = [], []
    for image_id, (name, (single, crowd)) in enumerate(sorted(counts.items()), start=1):
        images.append({"id": image_id, "file_name": name, "width": 640, "height": 480, "license": 1})
        for index in range(single + crowd):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": int(index >= single),
                    "area": 10.0,
                    "bbox": [0, 0, 5, 2],
                    "segmentation": {"counts": [1, 2], "size": [480, 640]} if index >= single else [[0, 0, 5, 0, 5, 2]],
                }
            )
    document = {
        "info": {"year": 2017, "version": "1.0"},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    return json.dumps(document).encode()


def coco_zip(train: dict[str, tuple[int, int]], val: dict[str, tuple[int, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations/instances_train2017.json", instances_json(train))
        archive.writestr("annotations/instances_val2017.json", instances_json(val))
        archive.writestr("annotations/captions_val2017.json", b"{}")  # the real zip holds other files too
    return buffer.getvalue()


TRAIN = {"000000000009.jpg": (3, 0), "000000000025.jpg": (2, 1)}
VAL = {"000000000139.jpg": (20, 0), "000000000285.jpg": (0, 0)}
EXPECTED = {
    "train2017/000000000009.jpg": 3,
    "train2017/000000000025.jpg": 2,  # the crowd region is not an object
    "val2017/000000000139.jpg": 20,
    "val2017/000000000285.jpg": 0,  # no annotation
}


def _config(**overrides) -> DataConfig:
    return DataConfig(**{"source": "vsr_random", "retry_backoff_seconds": 0.01, "timeout_seconds": 5.0, **overrides})


def test_counts_parse_from_the_served_zip_once_and_the_first_checksum_is_kept(tmp_path):
    with LoopbackServer() as server:
        server.routes[ZIP_PATH] = coco_zip(TRAIN, VAL)
        cfg = _config(coco_annotations_url=server.url + ZIP_PATH)
        counts, checksums = coco_counts.object_counts(cfg, tmp_path / "raw")
        assert counts == EXPECTED
        assert list(checksums) == ["annotations_trainval2017.zip"]
        assert (tmp_path / "raw/coco/annotations_trainval2017.zip.sha256").read_text().strip() == checksums[
            "annotations_trainval2017.zip"
        ]
        assert coco_counts.object_counts(cfg, tmp_path / "raw") == (counts, checksums)
        assert server.hits == {ZIP_PATH: 1}  # fetched once, then the cached counts
    (tmp_path / "raw/coco/annotations_trainval2017.zip").write_bytes(coco_zip(VAL, TRAIN))  # changed since
    with pytest.raises(ZeroVLMError, match="differs from .* recorded in annotations_trainval2017.zip.sha256"):
        coco_counts.object_counts(cfg, tmp_path / "raw")


def test_a_local_zip_or_extracted_folder_gives_the_same_counts(tmp_path):
    archive = tmp_path / "annotations_trainval2017.zip"
    archive.write_bytes(coco_zip(TRAIN, VAL))
    assert coco_counts.object_counts(_config(coco_annotations=str(archive)), tmp_path / "raw1")[0] == EXPECTED
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "extracted")
    folder = _config(coco_annotations=str(tmp_path / "extracted"))
    assert coco_counts.object_counts(folder, tmp_path / "raw2")[0] == EXPECTED


def test_a_wrong_file_is_one_error_naming_it(tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("annotations/instances_train2017.json", b'{"images": []}')
        archive.writestr("annotations/instances_val2017.json", b"{}")
    with pytest.raises(ZeroVLMError, match=r"broken.zip:annotations/instances_train2017.json: not a COCO instances"):
        coco_counts.object_counts(_config(coco_annotations=str(broken)), tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZeroVLMError, match="no instances_train2017.json there or under annotations/"):
        coco_counts.object_counts(_config(coco_annotations=str(tmp_path / "empty")), tmp_path / "raw")


def test_vsr_drafts_get_their_images_count_and_an_unlisted_image_is_a_bad_record():
    def draft(relative: str, line: int) -> Draft:
        return Draft({"example_id": f"x/{line}"}, ImageRef(relative, None), f"x/{line}", "on", f"test.jsonl:{line}")

    drafts = [draft("val2017/000000000139.jpg", 1), draft("val2017/000000999999.jpg", 2)]
    with pytest.raises(ZeroVLMError, match=r"test.jsonl:2: field 'image': val2017/000000999999.jpg is not in the COCO"):
        with_object_counts(drafts, EXPECTED, BadRecords(skip_bad=False))
    bad = BadRecords(skip_bad=True)
    kept = with_object_counts(drafts, EXPECTED, bad)
    assert [d.fields["num_objects"] for d in kept] == [20] and bad.summary()["count"] == 1


def test_offline_the_error_names_the_param_of_a_local_copy(tmp_path):
    with LoopbackServer() as server:  # serves nothing: 404
        cfg = _config(coco_annotations_url=server.url + ZIP_PATH, download_retries=0)
        with pytest.raises(ZeroVLMError, match="HTTP 404; set data.coco_annotations to a local"):
            coco_counts.object_counts(cfg, tmp_path / "raw")


def test_the_check_stage_records_a_local_copy_so_replacing_it_reruns_prepare(tmp_path):
    from tests.test_inputs import params
    from zerovlm.inputs import dataset_inputs

    archive = tmp_path / "annotations_trainval2017.zip"
    archive.write_bytes(coco_zip(TRAIN, VAL))
    values = params()
    values["datasets"]["local"] = {"source": "vsr_random", "coco_annotations": str(archive)}
    first = dataset_inputs(values, "local")["coco_annotations"]
    assert first["path"] == str(archive) and first["files"] == 1
    archive.write_bytes(coco_zip(VAL, TRAIN) + b"changed")
    assert dataset_inputs(values, "local")["coco_annotations"] != first
    values["datasets"]["local"]["coco_object_counts"] = False
    assert "coco_annotations" not in dataset_inputs(values, "local")
