"""Model parts by local path, hub id (at a revision) or `gdrive:<file_id>`: the Drive cache against a loopback
server, hub files from an offline hub cache, and the minigpt4.json manifest's checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.test_download import LoopbackServer, send_bytes
from tests.test_inputs import SHA_A, SHA_B, build_hub_cache
from zerovlm.io import ZeroVLMError
from zerovlm.vlm import model_files
from zerovlm.vlm.model_files import fetch_drive_file, read_manifest, repository, repository_file, single_file

FILE_ID = "1RY9jV0dyqLX-o38LrumkKRh6Jtaop58R"
PAYLOAD = bytes(range(256)) * 40


@pytest.fixture
def drive(monkeypatch, tmp_path):
    """A loopback 'Google Drive' answering the file's id with a confirmation form, as Drive does for large
    files; ZEROVLM_CACHE and ZEROVLM_GDRIVE_URL point at it and a temporary cache."""
    with LoopbackServer() as server:

        def uc(handler, hits):
            page = (
                f'<form id="download-form" action="/download" method="get">'
                f'<input type="hidden" name="id" value="{FILE_ID}">'
                f'<input type="hidden" name="confirm" value="t"></form>'
            ).encode()
            send_bytes(handler, page, "text/html; charset=utf-8")

        server.routes["/uc"] = uc
        server.routes["/download"] = PAYLOAD
        monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("ZEROVLM_GDRIVE_URL", f"{server.url}/uc?export=download&id={{file_id}}")
        yield server


def test_first_fetch_records_the_checksum_and_later_loads_stay_offline(drive, tmp_path):
    path, sha256 = fetch_drive_file(FILE_ID, "m.json: llama_proj")
    assert path == tmp_path / "cache" / "gdrive" / FILE_ID and path.read_bytes() == PAYLOAD
    assert sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert (tmp_path / "cache" / "gdrive" / f"{FILE_ID}.sha256").read_text().strip() == sha256
    hits = dict(drive.hits)
    assert single_file(tmp_path, f"gdrive:{FILE_ID}", "m.json: llama_proj") == (path, sha256)
    assert drive.hits == hits  # served from the cache


def test_a_cached_file_that_changed_is_an_error_naming_it_and_the_fix(drive, tmp_path):
    path, _ = fetch_drive_file(FILE_ID, "m.json: llama_proj")
    path.write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(
        ZeroVLMError,
        match=rf"{path}: SHA-256 \w+ differs from \w+, recorded in {FILE_ID}.sha256 "
        r"on its first download; delete both files to download it again",
    ):
        fetch_drive_file(FILE_ID, "m.json: llama_proj")


def test_a_download_that_differs_from_the_recorded_checksum_is_an_error(drive, tmp_path):
    path, _ = fetch_drive_file(FILE_ID, "m.json: llama_proj")
    path.unlink()
    drive.routes["/download"] = PAYLOAD[::-1]  # upstream replaced the file
    with pytest.raises(ZeroVLMError, match="differs from"):
        fetch_drive_file(FILE_ID, "m.json: llama_proj")


def test_the_default_cache_is_under_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("ZEROVLM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert model_files.cache_dir() == tmp_path / ".cache" / "zerovlm"


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda base: single_file(base, "gdrive:../../etc", "m.json: llama_proj"),
            r"m.json: llama_proj: '../../etc' is not a Google Drive file id",
        ),
        (
            lambda base: single_file(base, "missing.pth", "m.json: llama_proj"),
            r"m.json: llama_proj: .*missing.pth not found; give a file relative to .* or gdrive:<file_id>",
        ),
        (
            lambda base: repository(base, "gdrive:1RY9jV0dyqLX", "m.json: llm"),
            r"m.json: llm: 'gdrive:1RY9jV0dyqLX' is neither a folder under .* nor a hub id \(owner/name\)",
        ),
        (lambda base: repository(base, "vicuna", "m.json: llm"), r"'vicuna' is neither a folder under"),
    ],
)
def test_bad_part_values_are_one_line_errors(tmp_path, call, message):
    with pytest.raises(ZeroVLMError, match=message):
        call(tmp_path)


def test_a_url_template_without_the_file_id_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEROVLM_CACHE", str(tmp_path))
    monkeypatch.setenv("ZEROVLM_GDRIVE_URL", "http://127.0.0.1:9/uc")
    with pytest.raises(ZeroVLMError, match=r"ZEROVLM_GDRIVE_URL='http://127.0.0.1:9/uc': the template must contain"):
        fetch_drive_file(FILE_ID, "m.json: llama_proj")


def test_local_folders_and_hub_ids_resolve(tmp_path):
    (tmp_path / "vicuna").mkdir()
    assert repository(tmp_path, "vicuna", "llm") == str(tmp_path / "vicuna")
    assert repository(tmp_path, "Vision-CAIR/vicuna-7b", "llm") == "Vision-CAIR/vicuna-7b"


def test_a_hub_file_is_read_at_the_revision_asked(monkeypatch, tmp_path):
    import huggingface_hub.constants

    def config(commit):
        def build(snapshot):
            snapshot.mkdir(parents=True)
            (snapshot / "config.json").write_text(commit)

        return build

    build_hub_cache(tmp_path, "org/part", {SHA_A: config(SHA_A), SHA_B: config(SHA_B)}, main=SHA_A)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert repository_file("org/part", "config.json", "m.json: llm").read_text() == SHA_A  # main
    assert repository_file("org/part", "config.json", "m.json: llm", SHA_B).read_text() == SHA_B
    with pytest.raises(
        ZeroVLMError,
        match=r"^m.json: llm: cannot reach the Hugging Face hub for 'org/part' at v2 "
        r"\(config.json\) and it is not in the local cache",
    ):
        repository_file("org/part", "config.json", "m.json: llm", "v2")


def test_a_manifest_gives_each_hub_part_its_revision(tmp_path):
    (tmp_path / "vicuna").mkdir()
    (tmp_path / "minigpt4.json").write_text(
        json.dumps(
            {
                "vision_qformer": "org/blip2",
                "llm": "vicuna",
                "llama_proj": "p.pth",
                "revisions": {"vision_qformer": "v2"},
            }
        )
    )
    manifest = read_manifest(tmp_path, "vlms.mine.model")
    assert manifest.repository("vision_qformer") == ("org/blip2", "v2")
    assert manifest.repository("llm") == (str(tmp_path / "vicuna"), None)  # a folder has no revision
    (tmp_path / "minigpt4.json").write_text(
        json.dumps({"vision_qformer": "org/blip2", "llm": "org/vicuna", "llama_proj": "p.pth"})
    )
    assert read_manifest(tmp_path, "vlms.mine.model").repository("llm") == ("org/vicuna", "main")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"revision": {"llm": "v2"}},
            r"unknown keys \['revision'\]; valid: variant, vision_qformer, llm, llama_proj, "
            r"revisions \(variant and revisions optional\)",
        ),
        ({"llm": None}, r"missing keys \['llm'\]"),
        ({"llm": ""}, r"llm must be a non-empty string, got ''"),
        ({"revisions": {"llama_proj": "v2"}}, r"revisions must map vision_qformer or llm to a branch, tag or commit"),
        (
            {"revisions": {"llm": "v2"}},
            r"revisions.llm is 'v2', but llm is the local folder .*vicuna, which has no "
            r"revisions; remove revisions.llm",
        ),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_key(tmp_path, change, message):
    (tmp_path / "vicuna").mkdir()
    manifest = {"vision_qformer": "org/blip2", "llm": "vicuna", "llama_proj": "p.pth"} | change
    (tmp_path / "minigpt4.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not None}))
    with pytest.raises(ZeroVLMError, match=rf"^{tmp_path}/minigpt4.json: {message}") as error:
        read_manifest(tmp_path, "vlms.mine.model")
    assert "\n" not in str(error.value)
    with pytest.raises(ZeroVLMError, match=r"^vlms.mine.model: .*elsewhere/minigpt4.json not found; MiniGPT-4 needs"):
        read_manifest(tmp_path / "elsewhere", "vlms.mine.model")
