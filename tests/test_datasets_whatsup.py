"""What'sUp: the rebuilt subset A annotations (../shared/data/whatsup), a Google-Drive-like loopback
server, archives with hostile members, pair and set ids."""

from __future__ import annotations

import io
import json
import tarfile
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

from tests.test_datasets_images import picture_jpeg
from tests.test_download import LoopbackServer, send_bytes
from zerovlm.config import DataConfig
from zerovlm.datasets import whatsup
from zerovlm.datasets.sources import BadRecords
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, sha256_file
from zerovlm.pipeline import prepare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "whatsup"
pytestmark = pytest.mark.skipif(
    not SHARED.is_dir(), reason=(f"{SHARED} is absent: the What'sUp tests need the shared rebuilt annotation files")
)
A_JSON = SHARED / "controlled_images_dataset.json"
SAMPLE = SHARED / "sample_images" / "apple_left_of_armchair.jpeg"
SPEC_A = {"annotation_id": "1ap8mmmpQjLIjPGuplkpBgc1hoEHCj4hm", "archive_id": "19KGYVQjrV3syb00GgcavB2nZTW5NXX0H"}
B_WORDS = {"left of": "to the left of", "right of": "to the right of", "in front of": "in front of", "behind": "behind"}


def subset_b_stand_in(path: Path) -> Path:
    """Subset B's caption wording is not available here: build B-style records from the pair index."""
    records = []
    for line in (SHARED / "controlled_clevr_index_from_adaptvis.jsonl").open():
        row = json.loads(line)
        order = [row["gold_relation"], *(r for r in B_WORDS if r != row["gold_relation"])]
        records.append(
            {
                "image_path": row["image_path_guess"],
                "caption_options": [f"A {row['subject']} {B_WORDS[r]} a {row['object']}" for r in order],
            }
        )
    path.write_text(json.dumps(records))
    return path


def archive_bytes(names: list[str], hostile: bool = True, replaced: dict[str, bytes] | None = None) -> bytes:
    """A controlled_images.tar.gz: one JPEG per name (the real sample where it exists, `replaced` where given),
    plus hostile members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:

        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name in names:
            data = SAMPLE.read_bytes() if name == SAMPLE.name else picture_jpeg(name)
            add(f"controlled_images/{name}", (replaced or {}).get(name, data))
        if hostile:
            add("../evil_on_table.jpeg", b"evil")
            add("controlled_images/._mug_on_table.jpeg", b"macos resource fork")
            link = tarfile.TarInfo("controlled_images/link_on_table.jpeg")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return buffer.getvalue()


def a_names() -> list[str]:
    return [r["image_path"].split("/")[-1] for r in json.loads(A_JSON.read_text())]


@pytest.fixture
def drive(tmp_path):
    """Google Drive as the upstream loader sees it: uc?id=... , a confirmation form for the archive."""
    archive = archive_bytes(a_names())
    with LoopbackServer() as server:

        def uc(handler, hits):
            file_id = urllib.parse.parse_qs(urllib.parse.urlsplit(handler.path).query)["id"][0]
            if file_id == SPEC_A["annotation_id"]:
                return send_bytes(handler, A_JSON.read_bytes(), "application/json")
            if file_id == SPEC_A["archive_id"]:  # too large to scan: Drive asks to confirm
                page = (
                    f'<form id="download-form" action="/download" method="get">'
                    f'<input type="hidden" name="id" value="{file_id}">'
                    f'<input type="hidden" name="confirm" value="t"></form>'
                ).encode()
                return send_bytes(handler, page, "text/html; charset=utf-8")
            handler.send_error(404)

        server.routes["/uc"] = uc
        server.routes["/download"] = archive
        yield server


def _config(server, **overrides) -> DataConfig:
    values = dict(
        source="whatsup_a", gdrive_url=f"{server.url}/uc?export=download&id={{file_id}}", retry_backoff_seconds=0.01
    )
    return DataConfig(**{**values, **overrides})


def test_subset_a_parses_into_103_sets_of_two_pairs():
    drafts = whatsup.parse_records(A_JSON, "whatsup_a", 0, BadRecords(skip_bad=False))
    assert len(drafts) == 412
    groups = Counter(d.fields["group_id"] for d in drafts)
    pairs = Counter(d.fields["pair_id"] for d in drafts)
    assert len(groups) == 103 and set(groups.values()) == {4}
    assert len(pairs) == 206 and set(pairs.values()) == {2}
    assert Counter(d.fields["relation"] for d in drafts) == {r: 103 for r in ("on", "under", "left of", "right of")}
    for d in drafts:
        upstream = d.fields["source"]["caption_options"]
        assert sorted(d.fields["options"]) == sorted(upstream)
        assert d.fields["options"][d.fields["answer_index"]] == upstream[0]
    assert len(Counter(d.fields["answer_index"] for d in drafts)) == 4  # shuffled, not gold-first


def test_gold_relations_agree_with_an_independent_answer_file():
    answers = [
        json.loads(line)["answer"][0].lower()
        for line in (SHARED / "upstream_derived/adaptvis_Controlled_Images_A_with_answer_four_options.jsonl").open()
    ]
    drafts = whatsup.parse_records(A_JSON, "whatsup_a", 0, BadRecords(skip_bad=False))
    assert [d.fields["relation"].split()[0] for d in drafts] == answers


def test_subset_b_style_names_parse_into_102_sets(tmp_path):
    drafts = whatsup.parse_records(subset_b_stand_in(tmp_path / "b.json"), "whatsup_b", 0, BadRecords(False))
    assert len(drafts) == 408 and len({d.fields["group_id"] for d in drafts}) == 102
    assert Counter(d.fields["relation"] for d in drafts) == {r: 102 for r in B_WORDS}
    assert {d.fields["pair_id"].rsplit("/", 1)[1] for d in drafts} == {"horizontal", "depth"}


def test_the_shuffle_is_seeded():
    first = whatsup.parse_records(A_JSON, "whatsup_a", 0, BadRecords(False))
    again = whatsup.parse_records(A_JSON, "whatsup_a", 0, BadRecords(False))
    other = whatsup.parse_records(A_JSON, "whatsup_a", 1, BadRecords(False))
    assert [d.fields["options"] for d in first] == [d.fields["options"] for d in again]
    assert [d.fields["options"] for d in first] != [d.fields["options"] for d in other]


def test_download_from_drive_keeps_whole_sets_and_extracts_safely(drive, tmp_path):
    summary = prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), _config(drive, limit=10))
    examples = read_table(tmp_path / "prepared")
    assert len(examples) == 8 and len({e.group_id for e in examples}) == 2  # whole sets of 4 only
    assert len({e.pair_id for e in examples}) == 4
    raw = tmp_path / "raw/whatsup"
    assert summary["source_checksums"] == {
        "controlled_images_dataset.json": sha256_file(A_JSON),
        "controlled_images.tar.gz": sha256_file(raw / "controlled_images.tar.gz"),
    }
    extracted = sorted(p.name for p in (raw / "controlled_images").iterdir() if not p.name.startswith("."))
    assert len(extracted) == 412 and "link_on_table.jpeg" not in extracted
    assert not list(tmp_path.rglob("evil_on_table.jpeg"))
    hits = dict(drive.hits)
    prepare.run(prepare.Paths(out=tmp_path / "again", raw=tmp_path / "raw"), _config(drive, limit=10))
    assert drive.hits == hits  # annotation, archive and extraction are all reused


def test_the_real_sample_image_is_stored_byte_for_byte(drive, tmp_path):
    prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), _config(drive))
    examples = read_table(tmp_path / "prepared")
    assert len(examples) == 412
    apple = next(e for e in examples if e.source["image_path"].endswith(SAMPLE.name))
    assert apple.relation == "left of" and apple.image_file.endswith(".jpg")
    assert (tmp_path / "prepared" / apple.image_file).read_bytes() == SAMPLE.read_bytes()


@pytest.mark.parametrize("as_archive", [True, False])
def test_local_copies_mean_no_download(tmp_path, as_archive):
    archive = tmp_path / "controlled_images.tar.gz"
    archive.write_bytes(archive_bytes(a_names(), hostile=False))
    images = archive
    if not as_archive:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "local", filter="data")
        images = tmp_path / "local"
    cfg = DataConfig(
        source="whatsup_a",
        annotations_dir=str(SHARED),
        images_dir=str(images),
        gdrive_url="http://127.0.0.1:9/{file_id}",
        download_retries=0,
    )
    summary = prepare.run(prepare.Paths(out=tmp_path / "prepared", raw=tmp_path / "raw"), cfg)
    assert summary["examples"] == 412 and summary["images"] == 412


def test_a_missing_image_is_strict_by_default_and_a_counted_skip_with_skip_bad(tmp_path):
    names = a_names()
    archive = tmp_path / "controlled_images.tar.gz"
    archive.write_bytes(archive_bytes(names[1:], hostile=False))  # the first record's image is missing
    cfg = DataConfig(source="whatsup_a", annotations_dir=str(SHARED), images_dir=str(archive))
    with pytest.raises(ZeroVLMError, match=r"controlled_images_dataset\.json:1: field 'image_path'"):
        prepare.run(prepare.Paths(out=tmp_path / "strict", raw=tmp_path / "raw"), cfg)
    summary = prepare.run(
        prepare.Paths(out=tmp_path / "skip", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
    )
    assert summary["skipped"]["count"] == 1 and summary["examples"] == 411


def test_another_archive_is_extracted_afresh(tmp_path):
    names = a_names()
    partial, complete = tmp_path / "partial.tar.gz", tmp_path / "complete.tar.gz"
    partial.write_bytes(archive_bytes(names[1:], hostile=False))
    complete.write_bytes(archive_bytes(names, hostile=False))
    cfg = DataConfig(source="whatsup_a", annotations_dir=str(SHARED), images_dir=str(partial), skip_bad=True)
    assert prepare.run(prepare.Paths(out=tmp_path / "first", raw=tmp_path / "raw"), cfg)["examples"] == 411
    cfg = cfg.model_copy(update={"images_dir": str(complete)})  # the same raw folder, another archive
    assert prepare.run(prepare.Paths(out=tmp_path / "second", raw=tmp_path / "raw"), cfg)["examples"] == 412


def test_bad_records_name_file_position_and_field(tmp_path):
    records = json.loads(A_JSON.read_text())[:7]
    records[0]["image_path"] = "data/../../../etc/passwd_on_x.jpeg"
    records[1]["caption_options"] = records[1]["caption_options"][:3]
    records[2]["image_path"] = "data/controlled_images/mug_beside_table.jpeg"
    records[3]["caption_options"] = list(reversed(records[3]["caption_options"]))  # gold no longer first
    records[4] = records[5]  # duplicate image
    del records[6]["caption_options"]
    path = tmp_path / "controlled_images_dataset.json"
    path.write_text(json.dumps(records))
    with pytest.raises(ZeroVLMError, match=r"controlled_images_dataset\.json:1: field 'image_path': unsafe"):
        whatsup.parse_records(path, "whatsup_a", 0, BadRecords(skip_bad=False))
    bad = BadRecords(skip_bad=True)
    assert len(whatsup.parse_records(path, "whatsup_a", 0, bad)) == 1
    assert [(b.line, b.field) for b in bad.records] == [
        (1, "image_path"),
        (2, "caption_options"),
        (3, "image_path"),
        (4, "caption_options"),
        (6, "image_path"),
        (7, "caption_options"),
    ]


def test_an_archived_image_that_fails_a_check_is_strict_by_default_and_a_counted_skip_with_skip_bad(tmp_path):
    names = a_names()
    archive = tmp_path / "controlled_images.tar.gz"
    archive.write_bytes(archive_bytes(names, hostile=False, replaced={names[1]: picture_jpeg("one", size=(1, 1))}))
    cfg = DataConfig(source="whatsup_a", annotations_dir=str(SHARED), images_dir=str(archive))
    with pytest.raises(
        ZeroVLMError,
        match=rf"controlled_images_dataset\.json:2: field 'image_path': \S*{names[1]}: "
        rf"1x1 px: shorter side 1 < data\.min_image_side_px=32",
    ):
        prepare.run(prepare.Paths(out=tmp_path / "strict", raw=tmp_path / "raw"), cfg)
    summary = prepare.run(
        prepare.Paths(out=tmp_path / "skip", raw=tmp_path / "raw"), cfg.model_copy(update={"skip_bad": True})
    )
    assert summary["skipped"]["by_check"] == {"min_image_side_px": 1} and summary["examples"] == 411
