"""Data-parallel stages: several processes (accelerate launch, gloo on CPU) give the one-process output."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from PIL import Image

from zerovlm.config import DataConfig, StitchConfig, SyntheticSource
from zerovlm.datasets.table import read_table
from zerovlm.parallel import Worker, host_threads
from zerovlm.pipeline import prepare, stitch
from zerovlm.store import ShardWriter
from zerovlm.vlm.tiny import build_tiny_llava

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_processes_own_the_plan_round_robin():
    plan = [f"chunk {i}" for i in range(11)]
    parts = [Worker(rank, 4).owned(plan) for rank in range(4)]
    assert sorted(sum(parts, [])) == sorted(plan)  # every unit once
    assert [len(part) for part in parts] == [3, 3, 3, 2]  # shares differ by at most one unit
    assert parts[1] == ["chunk 1", "chunk 5", "chunk 9"]  # by position in the plan, in plan order
    assert Worker().owned(plan) == plan


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    prepare.run(prepare.Paths(out=root / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=4)))
    with ShardWriter(root / "views") as views:
        for image_id in sorted({e.image_id for e in read_table(root / "prepared")}):
            views.add(f"{image_id}.left", Image.new("RGB", (32, 32), (20, 160, 30)))
    stitch.run(
        stitch.Paths(prepared=root / "prepared", views=root / "views", out=root / "stitched"),
        StitchConfig(configurations=("origin", "left"), panel_size_px=32, gap_px=2),
    )
    build_tiny_llava(root / "llava", seed=0)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["infer"].update(model=str(root / "llava"), dtype="float32", device="cpu")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _command(root, out, processes, module="stages.infer"):
    stage = [
        "-m",
        module,
        "--params",
        str(root / "params.yaml"),
        "--prepared",
        str(root / "prepared"),
        "--stitched",
        str(root / "stitched"),
        "--out",
        str(root / out),
    ]
    if processes == 1:
        return [sys.executable, *stage]
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    return [*launcher, *stage]


def _env():
    return {
        **os.environ,
        "ZEROVLM_LOG": "WARNING",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def _run(command):
    result = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_predictions(workspace):
    _run(_command(workspace, "one", 1))
    return (workspace / "one/predictions.jsonl").read_text()


def test_two_processes_give_the_one_process_output(workspace, one_process_predictions):
    _run(_command(workspace, "two", 2))
    assert one_process_predictions and (workspace / "two/predictions.jsonl").read_text() == one_process_predictions


@pytest.mark.parametrize("resume_processes", [1, 2])
def test_a_killed_launch_leaves_no_output_and_a_rerun_finishes(workspace, resume_processes):
    """A rerun with any number of processes finishes the killed launch's work: each process takes its units of
    the whole plan, then leaves out those finished."""
    # The delayed entry point uses small chunks; chunks fix the batch composition, so the reference
    # and the resumed run use the same entry point.
    if not (workspace / "slow_one/predictions.jsonl").exists():
        _run(_command(workspace, "slow_one", 1, module="tests.infer_with_delay"))
    killed = f"killed_{resume_processes}"
    process = subprocess.Popen(
        _command(workspace, killed, 2, module="tests.infer_with_delay"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    part = workspace / f".{killed}.partial/part-001-of-002.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (part.exists() and part.read_text().count("\n") >= 2):
        time.sleep(0.05)
    # torchrun's workers run in sessions of their own: kill the launcher's whole process tree
    launcher = psutil.Process(process.pid)
    tree = [launcher, *launcher.children(recursive=True)]  # the launcher first: it cannot restart or reap them
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker may exit as its peer dies
            member.kill()
    psutil.wait_procs(tree, timeout=30)
    process.wait()
    assert part.exists(), "the launch never wrote a finished chunk"
    assert not (workspace / killed).exists(), "a killed launch must not leave a finished-looking output"

    _run(_command(workspace, killed, resume_processes, module="tests.infer_with_delay"))
    assert (workspace / killed / "predictions.jsonl").read_text() == (
        workspace / "slow_one/predictions.jsonl"
    ).read_text()


def test_two_processes_synthesise_the_same_view_store(workspace):
    from zerovlm.views.tiny import build_tiny_zero123

    build_tiny_zero123(workspace / "zero123", seed=0)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["views"].update(
        model=str(workspace / "zero123"),
        image_size_px=32,
        num_inference_steps=2,
        dtype="float32",
        device="cpu",
        batch_size=3,
        presets=["left", "random"],
    )
    (workspace / "views_params.yaml").write_text(yaml.safe_dump(params))

    def views(out, processes):
        command = _command(workspace, out, processes, module="stages.views")
        command[command.index("--params") + 1] = str(workspace / "views_params.yaml")
        stitched = command.index("--stitched")
        del command[stitched : stitched + 2]
        _run(command)
        return {p.name: p.read_bytes() for p in (workspace / out).iterdir() if p.name.startswith("shard-")}

    one, two = views("views_one", 1), views("views_two", 2)
    assert one and one == two


def test_host_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert (host_threads(), host_threads(limit=2)) == (3, 2)
