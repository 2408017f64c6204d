"""`dvc repro` end to end in a temporary copy of the repo: which stages run after which change.

The copy gets a smaller demo profile (fewer scenes, steps and configurations) so that the whole
module stays within a few minutes on 2 cores; the stage code and dvc.yaml are the real ones.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ALL_STAGES = {"models", "prepare", "views", "stitch", "infer", "score"}
SMALL_DEMO = {
    "data": {"source": "synthetic", "synthetic": {"num_scenes": 4}},
    "views": {"model": "data/models/zero123-tiny", "image_size_px": 32, "num_inference_steps": 2,
              "dtype": "float32", "batch_size": 8, "presets": ["left", "right", "random"]},
    "stitch": {"panel_size_px": 32, "gap_px": 4, "configurations": ["origin", "left", "all"]},
    "infer": {"model": "data/models/llava-1.5-tiny", "dtype": "float32"},
    "score": {"bootstrap_samples": 50},
}


def _run(args, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "ZEROVLM_LOG": "WARNING"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _repro(repo) -> set[str]:
    output = _run(["dvc", "repro"], repo).stdout
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


def _set_param(repo, dotted_key, value):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted_key.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the working tree with the small demo profile composed into params.yaml."""
    copy = tmp_path_factory.mktemp("pipeline") / "repo"
    listed = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    demo = copy / "conf/profile/demo.yaml"
    demo.write_text("# @package _global_\n" + yaml.safe_dump({"profile": "demo", **SMALL_DEMO}))
    _run([sys.executable, "-m", "zerovlm.cli", "params", "--profile", "demo"], copy)
    _run(["git", "init", "-q"], copy)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], copy)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], copy)
    return copy


def test_first_run_runs_every_stage_and_writes_metrics(repo):
    assert _repro(repo) == ALL_STAGES
    summary = json.loads((repo / "metrics/summary.json").read_text())
    cell = summary["synthetic"]["true_false"]["all"]["with_view_prompt"]
    assert cell["n_total"] == 4 and cell["chance"] == 0.5 and 0.0 <= cell["accuracy"] <= 1.0
    assert set(summary["synthetic"]) == {"true_false", "multiple_choice"}
    shown = _run(["dvc", "metrics", "show"], repo).stdout
    assert "metrics/summary.json" in shown


def test_nothing_changed_runs_nothing(repo):
    assert _repro(repo) == set()


def test_prompt_knob_reruns_only_infer_and_score(repo):
    _set_param(repo, "infer.view_prompt", [True])
    assert _repro(repo) == {"infer", "score"}


def test_view_knob_reruns_views_onward(repo):
    _set_param(repo, "views.num_inference_steps", 3)
    assert _repro(repo) == {"views", "stitch", "infer", "score"}


def test_dataset_size_reruns_everything_downstream_of_the_data(repo):
    _set_param(repo, "data.synthetic.num_scenes", 5)
    assert _repro(repo) == ALL_STAGES - {"models"}  # the tiny models do not depend on the data


def test_invalid_param_fails_the_stage_with_a_clear_error(repo):
    _set_param(repo, "stitch.layout", "mosaic")
    result = _run(["dvc", "repro"], repo, check=False)
    assert result.returncode != 0
    assert "stitch.layout: Input should be 'grid' or 'strip'" in result.stderr + result.stdout
    _set_param(repo, "stitch.layout", "grid")


def test_experiment_on_a_prompt_knob_is_compared_by_dvc(repo):
    _repro(repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "baseline"], repo)
    _run(["dvc", "exp", "run", "-n", "tf-template", "-S", "infer.question_template=true_false"], repo)
    shown = _run(["dvc", "exp", "show", "--md", "--no-pager"], repo).stdout
    assert "tf-template" in shown
    diff = _run(["dvc", "metrics", "diff", "HEAD", "tf-template", "--all", "--md"], repo).stdout
    assert "metrics/summary.json" in diff and "with_view_prompt.accuracy" in diff
