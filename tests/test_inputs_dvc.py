"""`dvc repro` with the check stage, in temporary copies of the repo (tests/dvc_helpers.py).

Bad params stop the pipeline before any stage does work, with one `error:` line; a replaced image of a local
dataset folder re-runs prepare and what follows (and deleting the output does not bring the old images back
from the run-cache); a hub model is loaded at the commit models.lock pins, offline, from a temporary hub cache.
"""

import copy
import json
import re

import pytest
import yaml

from tests.dvc_helpers import (
    SMALL_DEMO,
    base_names,
    clone_producer,
    copy_repo,
    pipeline_template,
    repro,
    run,
    set_param,
)
from tests.test_inputs import SHA_A, SHA_B, build_hub_cache, noise, whatsup_folder

pytestmark = pytest.mark.slow


def ran_and_errors(repo, env=None) -> tuple[set[str], list[str], str]:
    """A failing `dvc repro`: (stages that started, the `error:` lines of the stages, the whole output)."""
    result = run(["dvc", "repro"], repo, check=False, env=env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    return (
        set(re.findall(r"Running stage '([\w@-]+)'", output)),
        [line for line in result.stderr.splitlines() if line.startswith("error:")],
        output,
    )


# ---------------------------------------------------------------- params, before any stage works
@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A clone of a repo where the whole pipeline ran: with valid params, only check would run."""
    return clone_producer(pipeline_template(tmp_path_factory), tmp_path_factory.mktemp("done") / "repo", checkout=True)


def _typo_section(params):
    params["viewz"] = {"num_inference_steps": 3}  # meant: views


def _image_size(params):
    params["views"]["image_size_px"] = 100


def _method_not_run(params):
    params["report"]["method_configuration"] = "origin+left"  # not in the demo's stitch.configurations


def _only_the_grid(params):
    for name in list(params):
        if name not in ("grid", "datasets", "vlms"):
            del params[name]


@pytest.mark.parametrize(
    "change, message",
    [  # each of these was a clean exit or found after other stages ran
        (_typo_section, "error: params.yaml: unknown section 'viewz'. Did you mean 'views'?"),
        (_image_size, "error: invalid params: views.image_size_px: Value error, must be a multiple of 8"),
        (_method_not_run, "error: report.method_configuration 'origin+left' is not in stitch.configurations"),
        (_only_the_grid, "error: params.yaml: no section data, models, views, stitch, infer, score, report;"),
    ],
    ids=["typo-section", "image-size-100", "method-not-a-configuration", "sections-missing"],
)
def test_invalid_params_stop_the_pipeline_in_check_with_one_error_line(done, change, message):
    params_file = done / "params.yaml"
    good = params_file.read_text()
    params = yaml.safe_load(good)
    change(params)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        ran, errors, output = ran_and_errors(done)
    finally:
        params_file.write_text(good)
    assert ran == {"check"}, output
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_an_empty_params_file_stops_dvc_before_any_stage(done):
    params_file = done / "params.yaml"
    good = params_file.read_text()
    params_file.write_text("")
    try:
        ran, _, output = ran_and_errors(done)
    finally:
        params_file.write_text(good)
    assert ran == set()
    assert "ERROR: failed to parse 'stages.prepare.foreach' in 'dvc.yaml': Could not find 'grid.datasets'" in output


# ---------------------------------------------------------------- a local dataset folder
def test_a_replaced_local_image_reruns_prepare_and_the_old_images_never_come_back(tmp_path):
    annotations, images = whatsup_folder(tmp_path / "whatsup")
    demo = copy.deepcopy(SMALL_DEMO)
    demo["grid"]["datasets"] = ["local"]
    demo["datasets"]["local"] = {"source": "whatsup_a", "annotations_dir": str(annotations), "images_dir": str(images)}
    repo = copy_repo(tmp_path / "repo", demo)
    everything = {
        "check",
        "models",
        "prepare@local",
        "pool",
        "views",
        "stitch@local",
        "infer@local-tiny",
        "score@local-tiny",
        "report",
        "gallery",
    }
    assert repro(repo)[0] == everything
    assert repro(repo)[0] == {"check"}

    replaced = images / "mug_on_table.jpeg"
    old_id = image_id(replaced)
    noise(replaced, seed=99)
    assert repro(repo)[0] == everything - {"models"}
    new_id = image_id(replaced)
    assert new_id in prepared_ids(repo) and old_id not in prepared_ids(repo)

    run(["rm", "-rf", "data/prepared/local"], repo)
    ran, cached = repro(repo)
    assert "prepare@local" in ran | cached and ran - {"prepare@local"} == {"check"}
    assert new_id in prepared_ids(repo) and old_id not in prepared_ids(repo)


def image_id(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # prepare keeps an RGB JPEG's bytes


def prepared_ids(repo) -> set[str]:
    return {json.loads(line)["image_id"] for line in (repo / "data/prepared/local/examples.jsonl").open()}


# ---------------------------------------------------------------- hub models pinned by models.lock
def test_hub_models_are_loaded_at_the_commit_the_lock_pins(tmp_path):
    from zerovlm.views.tiny import build_tiny_zero123
    from zerovlm.vlm.tiny import build_tiny_llava

    cache = tmp_path / "hub"
    zero123 = build_hub_cache(
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
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    demo = copy.deepcopy(SMALL_DEMO)
    demo["grid"]["datasets"] = ["sparse"]
    demo["views"]["model"] = "org/zero123-tiny"
    demo["vlms"]["tiny"]["model"] = "org/llava-tiny"
    repo = copy_repo(tmp_path / "repo", demo)
    everything = {
        "check",
        "models",
        "prepare@sparse",
        "pool",
        "views",
        "stitch@sparse",
        "infer@sparse-tiny",
        "score@sparse-tiny",
        "report",
        "gallery",
    }

    # 1. revision null: main, resolved offline from the cache's refs/main and pinned in models.lock
    assert repro(repo, env=offline)[0] == everything
    lock = yaml.safe_load((repo / "models.lock").read_text())
    assert lock["org--zero123-tiny--main"]["commit"] == SHA_A and lock["org--llava-tiny--main"]["commit"] == SHA_A
    assert commits(repo) == (SHA_A, SHA_A)

    # 2. upstream's main moves on: the lock holds, nothing re-runs, and views forced to run load the pinned commit
    (zero123 / "refs" / "main").write_text(SHA_B)
    assert repro(repo, env=offline)[0] == {"check"}
    assert repro(repo, "--force", "--single-item", "views", env=offline)[0] == {"views"}
    assert json.loads((repo / "data/views_run.json").read_text())["model_revision"] == SHA_A

    # 3. another Zero123 commit: views and what follows, not the data
    set_param(repo, "views.revision", SHA_B)
    assert repro(repo, env=offline)[0] == everything - {"models", "prepare@sparse", "pool"}
    assert commits(repo) == (SHA_B, SHA_A)

    # 4. another LLaVA commit: only what uses that VLM
    set_param(repo, "vlms.tiny.revision", SHA_B)
    assert base_names(repro(repo, env=offline)[0]) == {"check", "infer", "score", "report", "gallery"}
    assert commits(repo) == (SHA_B, SHA_B)

    # 5. offline, a revision neither the lock nor the cache knows: one error line in check, nothing else runs
    set_param(repo, "views.revision", "v2")
    ran, errors, output = ran_and_errors(repo, env=offline)
    assert ran == {"check"} and len(errors) == 1, output
    assert errors[0].startswith("error: org/zero123-tiny revision 'v2': offline (HF_HUB_OFFLINE=1)")
    assert "run `zerovlm lock` where there is network" in errors[0]


def commits(repo) -> tuple[str, str]:
    """The Zero123 and VLM commits in the run records and in the instance's provenance."""
    provenance = json.loads((repo / "metrics/grid/sparse/tiny/provenance.json").read_text())
    views_run = json.loads((repo / "data/views_run.json").read_text())
    infer_run = json.loads((repo / "data/predictions/sparse/tiny_run.json").read_text())
    assert provenance["views"]["model_revision"] == views_run["model_revision"]
    assert provenance["infer"]["model_revision"] == infer_run["model_revision"]
    return views_run["model_revision"], infer_run["model_revision"]
