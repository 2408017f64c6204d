"""The views stage: unique images, store contents, determinism, resume after interruption, bad input."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.views_fixtures import make_prepared, tiny_models, views_config  # noqa: F401  (pytest fixture)
from zerovlm import runtime
from zerovlm.io import ZeroVLMError, sha256_file
from zerovlm.pipeline import views
from zerovlm.store import ShardReader, ShardWriter
from zerovlm.views import synthesize
from zerovlm.views.poses import random_pose
from zerovlm.views.tiny import build_tiny_zero123

TESTS = Path(__file__).parent


def pngs(folder: Path) -> dict[str, bytes]:
    reader = ShardReader(folder)
    try:
        return {key: reader.png(key) for key in reader.keys()}
    finally:
        reader.close()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    return folder, make_prepared(folder, num_images=3, examples_per_image=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models, prepared):
    """An uninterrupted run: (output folder, summary)."""
    out = tmp_path_factory.mktemp("reference") / "views"
    return out, views.run(views.Paths(prepared=prepared[0], out=out), views_config(tiny_models["kxic"]), shard_size=4)


def test_each_unique_image_once_with_its_metadata(reference, prepared):
    out, summary = reference
    assert summary["examples"] == 6 and summary["images"] == 3 and summary["views"] == 12
    assert summary["views_generated"] == 12 and summary["device"] == "cpu" and summary["views_per_second"] > 0
    reader = ShardReader(out)
    image_id = prepared[1][0].image_id
    assert reader.keys()[:4] == [f"{image_id}.{view}" for view in ("left", "right", "top", "random")]
    metadata = reader.metadata(f"{image_id}.random")
    expected = random_pose(0, image_id)
    assert (metadata["polar_deg"], metadata["azimuth_deg"], metadata["radius"]) == (
        expected.polar_deg,
        expected.azimuth_deg,
        0.0,
    )
    assert metadata["view"] == "random" and metadata["seed"] == 0
    assert reader.image(f"{image_id}.left").size == (32, 32)
    assert (out / "summary.json").is_file() and not (out.parent / ".views.partial").exists()


def test_same_seed_same_bytes(tmp_path, tiny_models, prepared, reference):
    """The whole store, summary.json included, is the same for a re-run; timings go to the run record."""
    record = tmp_path / "views_run.json"
    views.run(
        views.Paths(prepared=prepared[0], out=tmp_path / "views", run_record=record),
        views_config(tiny_models["kxic"]),
        shard_size=4,
    )
    files = sorted(p.name for p in reference[0].iterdir())
    assert "summary.json" in files and files == sorted(p.name for p in (tmp_path / "views").iterdir())
    for name in files:
        assert sha256_file(reference[0] / name) == sha256_file(tmp_path / "views" / name), name
    run = json.loads(record.read_text())
    assert run["seconds_generating"] > 0 and run["views_generated"] == 12 and "peak_memory_bytes" in run
    assert run["seconds_loading"] > 0 and 0 < run["seconds_first_batch"] <= run["seconds_generating"]


def test_other_batch_size_same_views(tmp_path, tiny_models, prepared, reference):
    views.run(views.Paths(prepared=prepared[0], out=tmp_path / "v"), views_config(tiny_models["kxic"], batch_size=5))
    expected, got = pngs(reference[0]), pngs(tmp_path / "v")
    assert expected.keys() == got.keys()
    for key in expected:  # the same noise per view; float kernels may round a rare pixel by one level
        a, b = (np.asarray(Image.open(io.BytesIO(data)), dtype=int) for data in (expected[key], got[key]))
        assert np.abs(a - b).max() <= 1, key


def test_resume_after_an_exception_keeps_finished_shards(tmp_path, tiny_models, prepared, reference, monkeypatch):
    out, cfg = tmp_path / "views", views_config(tiny_models["kxic"])
    run = synthesize.Sampler._run
    fail_at_call(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="injected"):
        views.run(views.Paths(prepared=prepared[0], out=out), cfg, shard_size=4)
    partial = tmp_path / ".views.partial" / "part-000-of-001"
    finished = sorted(partial.glob("shard-*.jsonl"))
    assert len(finished) == 2 and not out.exists()
    stamps = {p.name: os.stat(p).st_mtime_ns for p in partial.glob("shard-*")}
    monkeypatch.setattr(synthesize.Sampler, "_run", run)
    summary = views.run(views.Paths(prepared=prepared[0], out=out), cfg, shard_size=4)
    assert summary["views_reused"] == 8 and summary["views_generated"] == 4
    assert pngs(out) == pngs(reference[0])
    assert all(os.stat(out / name).st_mtime_ns == mtime for name, mtime in stamps.items())


def test_a_failed_store_write_stops_the_run_with_its_error_and_keeps_finished_shards(
    tmp_path, tiny_models, prepared, reference, monkeypatch
):
    """The store is written in a background thread; its error (a full disk) still stops the stage as it is."""
    out, cfg = tmp_path / "views", views_config(tiny_models["kxic"])
    add_png, calls = ShardWriter.add_png, []

    def disk_full_at_the_sixth(writer, *args):
        calls.append(args[0])
        if len(calls) == 6:
            raise OSError(errno.ENOSPC, "No space left on device", str(writer.folder / "shard-00001.tar"))
        add_png(writer, *args)

    monkeypatch.setattr(ShardWriter, "add_png", disk_full_at_the_sixth)
    with pytest.raises(OSError) as raised:
        views.run(views.Paths(prepared=prepared[0], out=out), cfg, shard_size=4)
    assert raised.value.errno == errno.ENOSPC and len(calls) == 6  # nothing is stored after the failure
    partial = tmp_path / ".views.partial" / "part-000-of-001"
    assert [p.name for p in sorted(partial.glob("shard-*"))] == ["shard-00000.jsonl", "shard-00000.tar"]
    monkeypatch.setattr(ShardWriter, "add_png", add_png)
    summary = views.run(views.Paths(prepared=prepared[0], out=out), cfg, shard_size=4)
    assert summary["views_reused"] == 4 and pngs(out) == pngs(reference[0])


def test_each_batch_is_queued_before_the_one_before_is_stored(tmp_path, tiny_models, prepared, reference, monkeypatch):
    """The device never waits for the host between batches: batch n + 1 is queued before batch n's views are
    taken to the host (the first batch alone, so that its time is the start-up's). The views are the same."""
    events = []
    launch, result = synthesize.Sampler.launch, synthesize.PendingBatch.result

    def logged_launch(self, jobs, images):
        events.append(f"queue {jobs[0].image_id}")
        pending = launch(self, jobs, images)
        object.__setattr__(pending, "first_image", jobs[0].image_id)
        return pending

    def logged_result(self):
        events.append(f"store {self.first_image}")
        return result(self)

    monkeypatch.setattr(synthesize.Sampler, "launch", logged_launch)
    monkeypatch.setattr(synthesize.PendingBatch, "result", logged_result)
    out = tmp_path / "views"
    views.run(views.Paths(prepared=prepared[0], out=out), views_config(tiny_models["kxic"]), shard_size=4)
    first, second, third = sorted({example.image_id for example in prepared[1]})
    order = [f"queue {first}", f"store {first}", f"queue {second}", f"queue {third}", f"store {second}"]
    assert events == [*order, f"store {third}"] and pngs(out) == pngs(reference[0])


def test_a_batch_that_fails_to_load_keeps_the_batch_queued_before_it(
    tmp_path, tiny_models, prepared, reference, monkeypatch
):
    """Batch 2 is queued, not stored, when batch 3's images fail to load (in the loader thread): it is stored
    before the error propagates, and a resumed run reuses it."""
    out, load, calls = tmp_path / "views", views._load_batch, []

    def failing_load(jobs, foreground, size_px):
        calls.append(jobs)
        if len(calls) == 3:
            raise ZeroVLMError("injected load failure")
        return load(jobs, foreground, size_px)

    monkeypatch.setattr(views, "_load_batch", failing_load)
    with pytest.raises(ZeroVLMError, match="injected load failure"):
        views.run(views.Paths(prepared=prepared[0], out=out), views_config(tiny_models["kxic"]), shard_size=4)
    assert len(ShardReader(tmp_path / ".views.partial" / "part-000-of-001")) == 8
    monkeypatch.undo()
    summary = views.run(views.Paths(prepared=prepared[0], out=out), views_config(tiny_models["kxic"]), shard_size=4)
    assert summary["views_reused"] == 8 and pngs(out) == pngs(reference[0])


def test_resume_after_kill(tmp_path, tiny_models, prepared, reference):
    out = tmp_path / "views"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from views_fixtures import views_config
        from zerovlm.pipeline import views
        from zerovlm.views import zero123
        call, calls = zero123.Zero123Pipeline.__call__, [0]
        def hang_at_the_third_call(self, *args, **kwargs):  # the first shard is on disk once call 2 returns:
            calls[0] += 1                                   # the test kills the run while it waits here
            if calls[0] >= 3:
                time.sleep(600)
            return call(self, *args, **kwargs)
        zero123.Zero123Pipeline.__call__ = hang_at_the_third_call
        views.run(views.Paths(prepared=Path({str(prepared[0])!r}), out=Path({str(out)!r})),
                  views_config(Path({str(tiny_models["kxic"])!r})), shard_size=4)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / ".views.partial" / "part-000-of-001" / "shard-00000.jsonl"
    deadline = time.monotonic() + 120
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert first.exists(), stderr.decode()[-2000:]
    assert not out.exists()  # killed before publishing
    summary = views.run(views.Paths(prepared=prepared[0], out=out), views_config(tiny_models["kxic"]), shard_size=4)
    assert summary["views_reused"] >= 4 and summary["views_generated"] <= 8
    assert pngs(out) == pngs(reference[0])


def fail_at_call(monkeypatch, number: int) -> None:
    """Make the sampler raise on its `number`-th batch (the earlier batches are written)."""
    calls = {"n": 0}
    run = synthesize.Sampler._run

    def failing_run(self, jobs, images):
        calls["n"] += 1
        if calls["n"] == number:
            raise RuntimeError("injected failure")
        return run(self, jobs, images)

    monkeypatch.setattr(synthesize.Sampler, "_run", failing_run)


def tilt(polar_deg: float) -> dict:
    return {"custom": [{"name": "tilt", "polar_deg": polar_deg, "azimuth_deg": 0.0}]}


@pytest.mark.parametrize("change", ["steps", "custom pose", "model weights", "sampler code"])
def test_changed_settings_discard_the_partial_folder(tmp_path, tiny_models, prepared, monkeypatch, caplog, change):
    out, model = tmp_path / "views", tmp_path / "model"
    build_tiny_zero123(model, seed=0, layout="kxic")
    before, after = views_config(model, **tilt(30.0)), views_config(model, **tilt(30.0))
    if change == "steps":
        after = views_config(model, **tilt(30.0), num_inference_steps=3)
    elif change == "custom pose":  # the same view name with another pose
        after = views_config(model, **tilt(45.0))
    fail_at_call(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="injected"):
        views.run(views.Paths(prepared=prepared[0], out=out), before, shard_size=4)
    assert (tmp_path / ".views.partial" / "part-000-of-001" / "shard-00000.jsonl").is_file()
    monkeypatch.undo()
    if change == "model weights":  # the folder rebuilt in place, as the models stage does
        shutil.rmtree(model)
        build_tiny_zero123(model, seed=1, layout="kxic")
    if change == "sampler code":  # zerovlm/views edited between the interrupted run and this one
        edited = views.views_code_identity() + " after an edit"
        monkeypatch.setattr(views, "views_code_identity", lambda: edited)
    with caplog.at_level(logging.WARNING):
        summary = views.run(views.Paths(prepared=prepared[0], out=out), after, shard_size=4)
    assert "discarding" in caplog.text and summary["views_reused"] == 0
    poses = {
        ShardReader(out).metadata(f"{job.image_id}.tilt")["polar_deg"]
        for job in synthesize.plan_view_jobs(after, prepared[1], prepared[0])
    }
    assert poses == {after.custom[0].polar_deg}


def test_an_image_that_is_not_an_image_names_file_and_example(tmp_path, tiny_models):
    examples = make_prepared(tmp_path / "prepared", num_images=2, examples_per_image=1)
    bad = tmp_path / "prepared" / examples[1].image_file
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(ZeroVLMError) as error:
        views.run(
            views.Paths(prepared=tmp_path / "prepared", out=tmp_path / "views"), views_config(tiny_models["kxic"])
        )
    assert str(bad) in str(error.value) and examples[1].example_id in str(error.value)
    assert not (tmp_path / "views").exists()


def test_missing_model_is_a_clear_error(tmp_path, prepared):
    with pytest.raises(ZeroVLMError, match="build-tiny-models"):
        views.run(views.Paths(prepared=prepared[0], out=tmp_path / "views"), views_config(tmp_path / "no-model"))


def test_weights_variant_selects_the_variant_files(tmp_path, tiny_models, prepared):
    """views.weights_variant loads *.fp16.* files (bennyguo layout); the kxic layout has none: a clear error."""
    one_image = tmp_path / "prepared"
    make_prepared(one_image, num_images=1, examples_per_image=1)
    cfg = views_config(tiny_models["bennyguo"], weights_variant="fp16")
    summary = views.run(views.Paths(prepared=one_image, out=tmp_path / "views"), cfg)
    assert summary["views"] == 4 and summary["settings"]["weights_variant"] == "fp16"
    cfg = views_config(tiny_models["kxic"], weights_variant="fp16_ema")
    with pytest.raises(ZeroVLMError, match="fp16_ema"):
        views.run(views.Paths(prepared=one_image, out=tmp_path / "kxic"), cfg)


def test_cuda_out_of_memory_halves_the_batch_for_the_rest_of_the_run(tmp_path, tiny_models, prepared, monkeypatch):
    """Both forms torch raises (torch.OutOfMemoryError, or a RuntimeError with its text) halve the batch;
    the halved size is kept and recorded."""
    run = synthesize.Sampler._run
    sizes = []

    def out_of_memory_above_two(self, jobs, images):
        sizes.append(len(jobs))
        if len(jobs) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return run(self, jobs, images)

    monkeypatch.setattr(synthesize.Sampler, "_run", out_of_memory_above_two)
    summary = views.run(views.Paths(prepared=prepared[0], out=tmp_path / "views"), views_config(tiny_models["kxic"]))
    assert summary["views_generated"] == 12 and (summary["batch_size_final"], summary["oom_backoffs"]) == (2, 1)
    assert sizes == [4, 2, 2] + [2] * 4  # the failed batch retried in halves; the next batches start at 2


def test_half_precision_on_the_cpu_runs_in_float32_and_says_so(tmp_path, tiny_models, prepared, caplog):
    runtime._warn_half_precision_on_cpu.cache_clear()  # warnings of earlier tests in this process
    record = tmp_path / "views_run.json"
    with caplog.at_level(logging.WARNING):
        views.run(
            views.Paths(prepared=prepared[0], out=tmp_path / "views", run_record=record),
            views_config(tiny_models["kxic"], dtype="float16", presets=("left",)),
        )
    run = json.loads(record.read_text())
    assert (run["dtype"], run["dtype_used"]) == ("float16", "float32")
    assert "views.dtype float16 on the CPU: using float32" in caplog.text
