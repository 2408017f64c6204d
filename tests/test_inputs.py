"""The check stage's library (zerovlm/inputs.py): the whole params file validated up front, local dataset
inputs recorded, hub revisions pinned to commits in models.lock, and the loaders reading the pinned commit.

Offline: hub resolution reads a temporary hub cache in the real layout (models--org--name/refs, snapshots).
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from zerovlm import inputs
from zerovlm.cli import main as cli
from zerovlm.config import ViewsConfig, validate_all
from zerovlm.inputs import dataset_inputs, lock_key, model_source, pinned_commit, read_lock, write_lock
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import check as check_stage
from zerovlm.runtime import pin_revision, pinned_part_revisions

ROOT = Path(__file__).resolve().parents[1]
SHA_A, SHA_B = (hashlib.sha1(name.encode()).hexdigest() for name in ("revision a", "revision b"))


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write(path: Path, values) -> Path:
    path.write_text(yaml.safe_dump(values) if values is not None else "")
    return path


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- the whole params file, up front
def test_an_empty_or_partial_params_file_is_refused_not_filled_with_defaults(tmp_path):
    with pytest.raises(ZeroVLMError, match=r"no section data, models, views, .*`zerovlm params --profile demo`"):
        validate_all(write(tmp_path / "params.yaml", None))
    only_grid = {key: params()[key] for key in ("grid", "datasets", "vlms")}
    with pytest.raises(ZeroVLMError, match=r"no section data, models, views, stitch, infer, score, report;"):
        validate_all(write(tmp_path / "params.yaml", only_grid))


def test_an_image_size_zero123_cannot_encode_is_a_params_error(tmp_path):
    values = params()
    values["views"]["image_size_px"] = 100
    with pytest.raises(ZeroVLMError) as error:
        validate_all(write(tmp_path / "params.yaml", values))
    assert one_line(error) == (
        "invalid params: views.image_size_px: Value error, must be a multiple of 8 (the "
        "VAE encodes 8x8 pixels per latent) (got 100)"
    )
    assert ViewsConfig(image_size_px=264).image_size_px == 264


# ---------------------------------------------------------------- local dataset folders
def whatsup_folder(root: Path) -> tuple[Path, Path]:
    """A What'sUp A set of four (annotation JSON and 64 px JPEGs), as a researcher's local copy holds it."""
    annotations, images = root / "annotations", root / "images"
    annotations.mkdir(parents=True)
    images.mkdir()
    words = {"on": "on", "under": "under", "left_of": "to the left of", "right_of": "to the right of"}
    records = []
    for index, (token, words_of) in enumerate(words.items()):
        name = f"mug_{token}_table.jpeg"
        options = [f"A mug {words_of} a table"] + [f"A mug {w} a table" for t, w in words.items() if t != token]
        records.append({"image_path": f"data/controlled_images/{name}", "caption_options": options})
        noise(images / name, seed=index)
    (annotations / "controlled_images_dataset.json").write_text(json.dumps(records))
    return annotations, images


def noise(path: Path, seed: int) -> None:
    pixels = bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[i % 32] for i in range(64 * 64 * 3))
    Image.frombytes("RGB", (64, 64), pixels).save(path, quality=95)


def with_local_dataset(annotations: Path | None, images: Path | None) -> dict:
    values = params()
    local = {"annotations_dir": annotations, "images_dir": images}
    values["datasets"]["local"] = {"source": "whatsup_a", **{k: str(v) for k, v in local.items() if v}}
    return values


def test_local_dataset_inputs_follow_the_files_and_downloads_are_constant(tmp_path):
    annotations, images = whatsup_folder(tmp_path)
    values = with_local_dataset(annotations, images)
    first = dataset_inputs(values, "local")
    assert first["images_dir"]["files"] == 4 and first["annotations_dir"]["path"] == str(annotations)
    noise(images / "mug_on_table.jpeg", seed=99)  # one image replaced
    second = dataset_inputs(values, "local")
    assert second["images_dir"]["stat_sha256"] != first["images_dir"]["stat_sha256"]
    assert second["annotations_dir"] == first["annotations_dir"]
    (annotations / "controlled_images_dataset.json").write_text("[]")
    assert dataset_inputs(values, "local")["annotations_dir"] != first["annotations_dir"]
    constant = {"annotations_dir": None, "images_dir": None}
    assert dataset_inputs(with_local_dataset(None, None), "local") == constant  # downloaded: pinned by checksums
    assert dataset_inputs(values, "synthetic_sparse") == constant


def test_a_missing_local_folder_names_the_key_that_set_it(tmp_path):
    values = with_local_dataset(None, tmp_path / "nowhere")
    with pytest.raises(ZeroVLMError, match=r"^datasets.local.images_dir: '.*nowhere' not found") as error:
        dataset_inputs(values, "local")
    one_line(error)
    values = with_local_dataset(None, None)
    values["data"]["annotations_dir"] = str(tmp_path)  # shared by every dataset, set in `data`
    with pytest.raises(ZeroVLMError, match=r"^data.annotations_dir: no .json or .jsonl file in"):
        dataset_inputs(values, "local")


# ---------------------------------------------------------------- hub revisions and models.lock
def build_hub_cache(root: Path, repo: str, builders: dict[str, object], main: str) -> Path:
    """A hub cache in huggingface_hub's layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    for commit, build in builders.items():
        build(folder / "snapshots" / commit)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(main)
    return folder


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Offline, with a hub cache that knows org/tiny (main = SHA_A; snapshots need no files to resolve)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"

    def empty(folder):
        folder.mkdir(parents=True)

    build_hub_cache(cache, "org/tiny", {SHA_A: empty, SHA_B: empty}, main=SHA_A)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache / "models--org--tiny"


def test_a_revision_resolves_once_then_the_lock_holds_it_until_updated(offline_hub):
    lock = {}
    assert pinned_commit("org/tiny", SHA_B, lock) == SHA_B and lock == {}  # a commit is itself
    assert pinned_commit("org/tiny", None, lock) == SHA_A  # null: main, read offline from refs/main
    assert lock == {"org--tiny--main": {"repo": "org/tiny", "revision": "main", "commit": SHA_A}}
    (offline_hub / "refs" / "main").write_text(SHA_B)  # upstream moved on
    assert pinned_commit("org/tiny", "main", lock) == SHA_A
    assert pinned_commit("org/tiny", "main", lock, update=True) == SHA_B


def test_offline_and_not_cached_is_one_line_naming_the_repo_the_revision_and_the_fix(offline_hub):
    with pytest.raises(ZeroVLMError) as error:
        pinned_commit("org/elsewhere", "v2", {})
    message = one_line(error)
    assert message.startswith("org/elsewhere revision 'v2': offline (HF_HUB_OFFLINE=1)")
    assert "run `zerovlm lock` where there is network and commit models.lock" in message


def test_online_the_hub_is_asked_for_the_commit(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import HTTPError

    asked = []

    def model_info(self, repo, revision=None):
        asked.append((repo, revision))
        if repo == "org/down":
            raise HTTPError("connection refused")
        return SimpleNamespace(sha=SHA_B)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    assert pinned_commit("org/tiny", "v1.0", {}) == SHA_B and asked == [("org/tiny", "v1.0")]
    with pytest.raises(
        ZeroVLMError,
        match=r"^org/down revision 'main': cannot ask the Hugging Face hub .*"
        r"HF_HUB_OFFLINE=1",
    ) as error:
        pinned_commit("org/down", None, {})
    one_line(error)


def test_models_lock_keys_are_dvc_params_and_a_damaged_entry_is_named(tmp_path):
    assert lock_key("llava-hf/llava-1.5-7b-hf", "refs/pr/1") == "llava-hf--llava-1_5-7b-hf--refs_pr_1"
    path = tmp_path / "models.lock"
    entries = {lock_key("org/tiny", "main"): {"repo": "org/tiny", "revision": "main", "commit": SHA_A}}
    write_lock(path, entries)
    assert read_lock(path) == entries and path.read_text().startswith("# Hub models pinned to commits")
    write_lock(path, {"org--tiny--main": {"repo": "org/tiny", "revision": "main", "commit": "abc"}})
    with pytest.raises(ZeroVLMError, match=r"models.lock: entry 'org--tiny--main' must be .*run `zerovlm lock`"):
        read_lock(path)


def test_a_model_is_a_built_folder_another_folder_or_a_hub_commit(tmp_path, offline_hub):
    built = tmp_path / "data" / "models"
    (built / "zero123-tiny").mkdir(parents=True)
    assert model_source("views", str(built / "zero123-tiny"), None, {}, built) == {"path": str(built / "zero123-tiny")}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    local = model_source("vlms.mine", str(tmp_path / "mine"), "ignored", {}, built)
    assert local["files"] == 1 and len(local["stat_sha256"]) == 64
    assert model_source("views", "org/tiny", None, {}, built) == {
        "repo": "org/tiny",
        "revision": "main",
        "commit": SHA_A,
    }
    with pytest.raises(ZeroVLMError, match=r"^vlms.x.model: 'no/such/folder' is neither a folder"):
        model_source("vlms.x", "no/such/folder", None, {}, built)


def test_a_stage_loads_the_recorded_commit_of_its_own_model(tmp_path):
    source = tmp_path / "views.json"
    source.write_text(json.dumps({"repo": "org/tiny", "revision": "main", "commit": SHA_A}))
    assert pin_revision(ViewsConfig(model="org/tiny"), source).revision == SHA_A
    source.write_text(json.dumps({"path": "data/models/zero123-tiny"}))
    assert pin_revision(ViewsConfig(model="data/models/zero123-tiny", revision="v1"), source).revision is None
    with pytest.raises(ZeroVLMError, match=r"views.json: records model 'data/models/zero123-tiny', not 'org/tiny'"):
        pin_revision(ViewsConfig(model="org/tiny"), source)


def test_check_stage_writes_one_record_per_consumer_and_the_lock(tmp_path, offline_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)  # model paths are relative to the repository root
    values = params()
    values["views"]["model"] = "org/tiny"
    path = write(tmp_path / "params.yaml", values)
    check_stage.run(
        check_stage.Paths(
            out=tmp_path / "inputs", lock=tmp_path / "models.lock", built_models=Path("data/models"), params=path
        )
    )
    written = {p.name: json.loads(p.read_text()) for p in (tmp_path / "inputs").iterdir()}
    grid = values["grid"]
    assert set(written) == (
        {"models.json", "views.json"}
        | {f"prepare-{d}.json" for d in grid["datasets"]}
        | {f"vlm-{v}.json" for v in grid["vlms"]}
    )
    assert written["views.json"] == {"repo": "org/tiny", "revision": "main", "commit": SHA_A}
    assert written[f"vlm-{grid['vlms'][0]}.json"] == {"path": "data/models/llava-1.5-tiny"}
    assert read_lock(tmp_path / "models.lock")["org--tiny--main"]["commit"] == SHA_A


def test_zerovlm_lock_pins_and_update_resolves_again(tmp_path, offline_hub, capsys):
    values = params()
    values["views"]["model"] = "org/tiny"
    args = ["--params", str(write(tmp_path / "params.yaml", values)), "--lock", str(tmp_path / "models.lock")]
    cli(["lock", *args])
    assert f"views: org/tiny@main -> {SHA_A}" in capsys.readouterr().out
    (offline_hub / "refs" / "main").write_text(SHA_B)
    cli(["lock", *args])  # without --update the pin holds
    assert read_lock(tmp_path / "models.lock")["org--tiny--main"]["commit"] == SHA_A
    cli(["lock", "--update", "views", *args])
    assert read_lock(tmp_path / "models.lock")["org--tiny--main"]["commit"] == SHA_B
    with pytest.raises(SystemExit):
        cli(["lock", "--update", "vews", *args])
    assert "unknown model name(s) ['vews']; valid: views" in capsys.readouterr().err


# ---------------------------------------------------------------- MiniGPT-4: manifests by content, hub parts pinned
DRIVE_ID = "1RY9jV0dyqLX-o38LrumkKRh6Jtaop58R"


def write_minigpt4(folder: Path, **changes) -> Path:
    """A manifest folder: `mg_hub` names hub parts and a local llama_proj.pth; `mg_local` holds its parts as
    folders and names llama_proj on Google Drive."""
    if folder.name == "mg_hub":
        manifest = {"vision_qformer": "org/blip2-tiny", "llm": "org/vicuna-tiny", "llama_proj": "llama_proj.pth"}
    else:
        manifest = {"vision_qformer": "blip2", "llm": "vicuna", "llama_proj": f"gdrive:{DRIVE_ID}"}
    (folder / "minigpt4.json").write_text(json.dumps(manifest | changes, indent=2) + "\n")
    return folder / "minigpt4.json"


@pytest.fixture
def minigpt4_grid(tmp_path, offline_hub, monkeypatch) -> Path:
    """params.yaml whose grid holds llava_tiny and two MiniGPT-4 manifest folders (relative paths, as the
    committed manifests are), `mg_hub` and `mg_local`; the hub cache holds org/blip2-tiny (main = SHA_A) and two
    commits of org/vicuna-tiny (main = SHA_A)."""
    monkeypatch.chdir(tmp_path)
    for repo, commits in (("org/blip2-tiny", (SHA_A,)), ("org/vicuna-tiny", (SHA_A, SHA_B))):
        build_hub_cache(
            offline_hub.parent,
            repo,
            {commit: lambda folder: folder.mkdir(parents=True) for commit in commits},
            main=SHA_A,
        )
    for name in ("mg_hub", "mg_local"):
        Path(name).mkdir()
        write_minigpt4(Path(name))
    Path("mg_hub/llama_proj.pth").write_bytes(b"llama_proj weights")
    for part, files in (
        ("blip2", {"config.json": b"{}"}),
        ("vicuna", {"config.json": b'{"model_type": "llama"}', "model.safetensors": bytes(64)}),
    ):
        (Path("mg_local") / part).mkdir()
        for name, content in files.items():
            (Path("mg_local") / part / name).write_bytes(content)
    values = params()
    values["vlms"] |= {name: {"backend": "minigpt4", "model": name} for name in ("mg_hub", "mg_local")}
    values["grid"]["vlms"] = ["llava_tiny", "mg_hub", "mg_local"]
    return write(tmp_path / "params.yaml", values)


def check(params_path: Path) -> dict[str, bytes]:
    """Run the check stage (in the working directory); the bytes of each inputs file it wrote."""
    check_stage.run(
        check_stage.Paths(
            out=Path("inputs"), lock=Path("models.lock"), built_models=Path("data/models"), params=params_path
        )
    )
    return {path.name: path.read_bytes() for path in sorted(Path("inputs").iterdir())}


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if before[name] != after[name]}


def test_check_records_a_minigpt4_manifest_by_content_with_its_hub_parts_pinned(minigpt4_grid):
    written = {name: json.loads(content) for name, content in check(minigpt4_grid).items()}
    sha256 = {
        path: hashlib.sha256(Path(path).read_bytes()).hexdigest()
        for path in ("mg_hub/minigpt4.json", "mg_hub/llama_proj.pth", "mg_local/minigpt4.json")
    }
    assert written["vlm-mg_hub.json"] == {
        "path": "mg_hub",
        "manifest_sha256": sha256["mg_hub/minigpt4.json"],
        "parts": {
            "vision_qformer": {"repo": "org/blip2-tiny", "revision": "main", "commit": SHA_A},
            "llm": {"repo": "org/vicuna-tiny", "revision": "main", "commit": SHA_A},
            "llama_proj": {"path": "llama_proj.pth", "sha256": sha256["mg_hub/llama_proj.pth"]},
        },
    }
    local = written["vlm-mg_local.json"]
    assert local["manifest_sha256"] == sha256["mg_local/minigpt4.json"]
    assert local["parts"]["llama_proj"] == {"gdrive": DRIVE_ID}
    assert {key: value for key, value in local["parts"]["llm"].items() if key != "sha256"} == {
        "path": "vicuna",
        "files": 2,
        "bytes": 23 + 64,
    }
    lock = read_lock(Path("models.lock"))
    assert {key: entry["commit"] for key, entry in lock.items()} == {
        "org--blip2-tiny--main": SHA_A,
        "org--vicuna-tiny--main": SHA_A,
    }
    assert pinned_part_revisions(Path("inputs/vlm-mg_hub.json")) == {"vision_qformer": SHA_A, "llm": SHA_A}
    assert pinned_part_revisions(Path("inputs/vlm-mg_local.json")) == {}
    assert pinned_part_revisions(Path("inputs/vlm-llava_tiny.json")) is None


def test_another_llm_commit_in_a_manifest_changes_only_that_vlms_inputs_file(minigpt4_grid):
    write_minigpt4(Path("mg_hub"), revisions={"llm": SHA_A})
    before = check(minigpt4_grid)
    lock = Path("models.lock").read_text()
    write_minigpt4(Path("mg_hub"), revisions={"llm": SHA_B})
    after = check(minigpt4_grid)
    assert changed(before, after) == {"vlm-mg_hub.json"}
    parts = json.loads(after["vlm-mg_hub.json"])["parts"]
    assert parts["llm"] == {"repo": "org/vicuna-tiny", "revision": SHA_B, "commit": SHA_B}
    assert parts["vision_qformer"] == json.loads(before["vlm-mg_hub.json"])["parts"]["vision_qformer"]
    assert Path("models.lock").read_text() == lock  # a commit is itself: nothing to pin


def test_a_manifest_and_small_local_parts_are_recorded_by_content_not_mtime(minigpt4_grid, monkeypatch):
    """A colleague's clone (every mtime different, same bytes) writes identical inputs files; a local part's
    changed bytes show even at the same size and mtime. A part folder above PART_CONTENT_MAX_BYTES is
    recorded by stat, as other local folders are."""
    before = check(minigpt4_grid)
    later = time.time_ns() + 10**12
    for path in [*Path("mg_hub").rglob("*"), *Path("mg_local").rglob("*"), Path("mg_hub"), Path("mg_local")]:
        os.utime(path, ns=(later, later))
    assert check(minigpt4_grid) == before
    weights = Path("mg_local/vicuna/model.safetensors")
    weights.write_bytes(bytes(range(64)))  # same size
    os.utime(weights, ns=(later, later))  # and same mtime
    assert changed(before, after := check(minigpt4_grid)) == {"vlm-mg_local.json"}
    monkeypatch.setattr(inputs, "PART_CONTENT_MAX_BYTES", 64)  # vicuna/ (87 bytes) is now large, blip2/ is not
    parts = json.loads(check(minigpt4_grid)["vlm-mg_local.json"])["parts"]
    assert set(parts["llm"]) == {"path", "files", "bytes", "stat_sha256"}
    assert set(parts["vision_qformer"]) == {"path", "files", "bytes", "sha256"}
    assert changed(after, check(minigpt4_grid)) == {"vlm-mg_local.json"}


def test_zerovlm_lock_lists_and_pins_minigpt4_parts(minigpt4_grid, offline_hub, capsys):
    args = ["--params", str(minigpt4_grid), "--lock", "models.lock"]
    cli(["lock", *args])
    out = capsys.readouterr().out
    for line in (
        f"mg_hub.vision_qformer: org/blip2-tiny@main -> {SHA_A}",
        f"mg_hub.llm: org/vicuna-tiny@main -> {SHA_A}",
        "mg_local.vision_qformer: local folder blip2",
        "mg_local.llm: local folder vicuna",
    ):
        assert line in out.splitlines()
    (offline_hub.parent / "models--org--vicuna-tiny" / "refs" / "main").write_text(SHA_B)
    cli(["lock", *args])
    assert read_lock(Path("models.lock"))["org--vicuna-tiny--main"]["commit"] == SHA_A
    cli(["lock", "--update", "mg_hub", *args])
    assert read_lock(Path("models.lock"))["org--vicuna-tiny--main"]["commit"] == SHA_B


# ---------------------------------------------------------------- the loaders read the pinned commit
LOAD_BOTH = """
import sys, torch
from zerovlm.config import InferConfig
from zerovlm.views.checkpoints import load_components
from zerovlm.vlm.registry import load_backend
commit = sys.argv[1]
unet = load_components("org/zero123-tiny", revision=commit).unet
llava = load_backend(InferConfig(model="org/llava-tiny", revision=commit, device="cpu", dtype="float32")).model
print(float(next(unet.parameters()).sum()), float(next(llava.parameters()).sum()))
"""


def test_loaders_read_the_pinned_commit_from_the_hub_cache(tmp_path):
    """Offline, two commits of each tiny model in the hub cache: each load reads the commit it is given
    (main = SHA_A). Zero123 in the bennyguo layout: a cache filled online also records the files a kxic load
    probes for and the repo lacks (.no_exist/), which offline loading needs."""
    from zerovlm.views.tiny import build_tiny_zero123
    from zerovlm.vlm.tiny import build_tiny_llava

    cache = tmp_path / "hub"
    build_hub_cache(
        cache,
        "org/zero123-tiny",
        {SHA_A: lambda p: build_tiny_zero123(p, 0, "bennyguo"), SHA_B: lambda p: build_tiny_zero123(p, 1, "bennyguo")},
        main=SHA_A,
    )
    build_hub_cache(
        cache,
        "org/llava-tiny",
        {SHA_A: lambda p: build_tiny_llava(p, seed=0), SHA_B: lambda p: build_tiny_llava(p, seed=1)},
        main=SHA_A,
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}

    def weights(commit):
        result = subprocess.run(
            [sys.executable, "-c", LOAD_BOTH, commit], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    a, b = weights(SHA_A), weights(SHA_B)
    assert a[0] != b[0] and a[1] != b[1]
