"""`dvc repro` end to end in a temporary copy of the repo: which stages run after which change.

The copy gets a smaller demo profile (fewer scenes, steps and configurations; a grid of two datasets x
one tiny VLM, to which a second VLM is added and removed) so that the whole module stays within a few
minutes on 2 cores; the stage code and dvc.yaml are the real ones. The paper profile's grid is checked by
expanding dvc.yaml with DVC's own parser, without running anything.
"""

import json
import shutil
import sys

import pytest
import yaml

from tests.dvc_helpers import ROOT, SMALL_DEMO, copy_repo, repro, run, set_param

DATASETS, VLMS = tuple(SMALL_DEMO["grid"]["datasets"]), ("tiny", "tiny_b")
GRID = {f"{stage}@{d}-tiny" for stage in ("infer", "score") for d in DATASETS}  # tiny_b: added by a test
CHECK = {"check"}  # always_changed: validates params and rewrites data/inputs on every repro, first
ALL_STAGES = (
    {"check", "models", "pool", "views", "report", "gallery"}
    | {f"prepare@{d}" for d in DATASETS}
    | {f"stitch@{d}" for d in DATASETS}
    | GRID
)
AFTER_INFER = {"report", "gallery"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the working tree with the small demo profile composed into params.yaml."""
    return copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")


@pytest.mark.slow
def test_first_run_runs_every_stage_and_writes_metrics(repo):
    assert repro(repo)[0] == ALL_STAGES
    summary = json.loads((repo / "metrics/grid/sparse/tiny/summary.json").read_text())
    cell = summary["true_false"]["all"]["with_view_prompt"]
    assert cell["n_total"] == 2 and cell["chance"] == 0.5 and 0.0 <= cell["accuracy"] <= 1.0
    assert "mcnemar_p" in cell and "delta_ci95" in cell
    assert {"true_false", "multiple_choice", "counts", "overhead"} <= set(summary)
    shown = run(["dvc", "metrics", "show"], repo).stdout
    assert "metrics/headline.json" in shown and "summary.json" not in shown  # outputs in git, not DVC metrics
    table = (repo / "metrics/results.md").read_text()
    assert "| tiny | origin (baseline) | - |" in table and "cluttered (choice)" in table
    assert "| ZeroVLM (tiny) | all-separate | - | n/e | n/e |" in table and "all-separate" in summary["not_evaluated"]
    assert run([sys.executable, "-m", "zerovlm.cli", "show"], repo).stdout == table
    assert (repo / "data/gallery/index.html").is_file()
    plots = run(["dvc", "plots", "show", "--json"], repo).stdout
    assert '"errors"' not in plots and "metrics/plots/confusion/sparse.tiny.true_false.origin-novp.json" in plots


@pytest.mark.slow
def test_nothing_changed_runs_nothing_but_check(repo):
    assert repro(repo)[0] == CHECK


@pytest.mark.slow
def test_adding_a_vlm_runs_only_its_instances_and_one_vlm_knob_reruns_only_those(repo):
    tiny_b = {f"{s}@{d}-tiny_b" for s in ("infer", "score") for d in DATASETS}
    set_param(repo, "grid.vlms", list(VLMS))
    assert repro(repo)[0] == CHECK | tiny_b | AFTER_INFER  # the existing instances are untouched
    set_param(repo, "vlms.tiny_b.image_preprocess", "pad")
    assert repro(repo)[0] == CHECK | tiny_b | AFTER_INFER
    set_param(repo, "grid.vlms", ["tiny"])
    assert repro(repo)[0] == CHECK | AFTER_INFER  # dropping a VLM only re-draws the grid-wide reports


@pytest.mark.slow
def test_prompt_knob_reruns_only_infer_and_score(repo):
    set_param(repo, "infer.view_prompt", [True])
    assert repro(repo)[0] == CHECK | GRID | AFTER_INFER


@pytest.mark.slow
def test_view_knob_reruns_views_onward(repo):
    set_param(repo, "views.num_inference_steps", 3)
    assert repro(repo)[0] == ALL_STAGES - {"models", "pool"} - {f"prepare@{d}" for d in DATASETS}


@pytest.mark.slow
def test_dataset_size_reruns_everything_downstream_of_the_data(repo):
    set_param(repo, "data.synthetic.num_scenes", 3)
    assert repro(repo)[0] == ALL_STAGES - {"models"}  # the tiny models do not depend on the data


@pytest.mark.slow
def test_invalid_param_fails_the_check_stage_with_a_clear_error(repo):
    set_param(repo, "stitch.layout", "mosaic")
    result = run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0 and "failed to reproduce 'check'" in result.stderr
    assert "stitch.layout: Input should be 'grid' or 'strip'" in result.stderr + result.stdout
    set_param(repo, "stitch.layout", "grid")


# ---------------------------------------------------------------- the paper grid, expanded, not run
PAPER_DATASETS = ("vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b")
PAPER_VLMS = ("llava_7b", "llava_13b", "minigpt4_7b", "minigpt4_13b")


def test_paper_profile_grid_expands_to_the_expected_instances(tmp_path, monkeypatch):
    """dvc.yaml with params composed for the paper profile, expanded by DVC's parser (nothing runs)."""
    from dvc.repo import Repo

    from zerovlm.cli import compose_params

    monkeypatch.chdir(ROOT)
    Repo.init(tmp_path, no_scm=True)
    shutil.copy2(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    compose_params("paper", tmp_path / "params.yaml", [])
    with Repo(str(tmp_path)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        per_dataset = {f"{s}@{d}" for s in ("prepare", "stitch") for d in PAPER_DATASETS}
        per_instance = {f"{s}@{d}-{v}" for s in ("infer", "score") for d in PAPER_DATASETS for v in PAPER_VLMS}
        assert set(stages) == {"check", "models", "pool", "views", "report", "gallery"} | per_dataset | per_instance
        assert len(stages) == 6 + 2 * 4 + 2 * 4 * 4 == 46
        params = {
            dep.def_path: list(dep.params) for dep in stages["infer@whatsup_b-llava_13b"].deps if hasattr(dep, "params")
        }
        assert params == {"params.yaml": ["infer", "vlms.llava_13b"]}  # granular: one VLM's knobs only
        infer = stages["infer@vsr_zeroshot-llava_7b"]
        assert "--vlm llava_7b" in infer.cmd and "data/stitched/vsr_zeroshot" in infer.cmd
        assert [str(out) for out in infer.outs] == [
            "data/predictions/vsr_zeroshot/llava_7b",
            "data/predictions/vsr_zeroshot/llava_7b_run.json",
        ]
        views = [dep.def_path for dep in stages["views"].deps]
        assert "data/pool/images" in views  # one views stage for the union of the datasets' images


def test_grid_entries_merge_over_the_shared_sections_and_bad_names_are_explained(tmp_path):
    from zerovlm.config import dataset_config, validate_all, vlm_config
    from zerovlm.io import ZeroVLMError

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cluttered = dataset_config(params, "synthetic_cluttered")
    assert (cluttered.synthetic.min_objects, cluttered.synthetic.max_objects) == (5, 8)
    assert cluttered.synthetic.num_scenes == params["data"]["synthetic"]["num_scenes"]  # from `data`
    tiny = vlm_config(params, "llava_tiny")
    assert tiny.model == "data/models/llava-1.5-tiny" and tiny.view_prompt == (True, False)  # from `infer`
    with pytest.raises(ZeroVLMError, match="unknown name 'llava_13'.*Did you mean 'llava_13b'"):
        vlm_config(params, "llava_13")
    bad = {
        **params,
        "datasets": {**params["datasets"], "broken": {"synthetic": {"max_objects": 1}}},
        "grid": {"datasets": ["broken"], "vlms": ["llava_tiny"]},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ZeroVLMError, match=r"(?s)datasets.broken.synthetic.max_objects.*merged over the `data`"):
        validate_all(path)
    path.write_text(yaml.safe_dump({**params, "vlms": {"LLaVA-7B": {}}}))
    with pytest.raises(ZeroVLMError, match="use lower-case letters, digits and '_'"):
        validate_all(path)


@pytest.mark.slow
def test_resynthesised_identical_views_keep_stitch_and_infer_cached(repo):
    repro(repo)  # after the failed check of the invalid-param test, data/inputs is written again
    run(["dvc", "repro", "--force", "--single-item", "views"], repo)
    ran = repro(repo)[0]
    assert not {stage for stage in ran if stage.startswith(("stitch", "infer"))}, ran
