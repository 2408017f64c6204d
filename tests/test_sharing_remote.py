"""Sharing view sets through a local DVC remote (docs/sharing.md), with real dvc commands.

A producer repo (the pipeline run once on a small demo profile, see dvc_helpers.pipeline_template)
pushes to a folder remote with `verify = true`; consumers are fresh `git clone`s with empty caches.
Each test asserts which stages ran, what was pulled, and what DVC reports.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.dvc_helpers import (
    CRASHING_DVC,
    base_names,
    cache_objects,
    clone_producer,
    corrupt,
    git_commit,
    lock_md5,
    pipeline_template,
    remote_objects,
    repro,
    run,
    set_param,
)
from zerovlm.io import ZeroVLMError
from zerovlm.sharing import check_remote, export_views
from zerovlm.store import ShardReader

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Producer after a (GPU) run: remote configured with verify = true, committed, `dvc push` done."""
    base = tmp_path_factory.mktemp("sharing")
    template = pipeline_template(tmp_path_factory)
    producer = clone_producer(template, base / "producer")
    remote = base / "remote"
    run(["dvc", "remote", "add", "-d", "shared", remote], producer)
    run(["dvc", "remote", "modify", "shared", "verify", "true"], producer)
    git_commit(producer, "share the pipeline outputs")
    assert "files pushed" in run(["dvc", "push"], producer).stdout
    views_dir = lock_md5(producer, "views", "data/views")
    manifest = json.loads((remote / "files/md5" / views_dir[:2] / views_dir[2:]).read_text())
    return SimpleNamespace(
        base=base,
        template=template,
        producer=producer,
        remote=remote,
        views_dir=views_dir,
        views_files=[entry["relpath"] for entry in manifest],
        n_views=len(ShardReader(template / "data/views")),
        n_objects=len(remote_objects(remote)),
    )


def consumer(shared, name: str, remote: Path | None = None) -> Path:
    """A colleague's fresh clone (empty cache); `remote` overrides the shared remote's URL locally."""
    clone = shared.base / name
    run(["git", "clone", "-q", shared.producer, clone], shared.base)
    if remote is not None:
        run(["dvc", "remote", "modify", "--local", "shared", "url", remote], clone)
    return clone


def views_file_object(remote: Path, views_dir: str, relpath: str = "shard-00000.tar") -> tuple[str, Path]:
    """(md5, remote object path) of one file of the views output, read from its .dir manifest."""
    manifest = json.loads((remote / "files/md5" / views_dir[:2] / views_dir[2:]).read_text())
    md5 = next(entry["md5"] for entry in manifest if entry["relpath"] == relpath)
    return md5, remote / "files/md5" / md5[:2] / md5[2:]


def test_same_commit_pull_views_then_repro_does_not_run_views(shared):
    clone = consumer(shared, "same-commit")
    run(["dvc", "pull", "views"], clone)
    # the views stage's outputs only: the store's manifest and files, and its run record
    assert len(cache_objects(clone)) == 1 + len(shared.views_files) + 1
    assert len(ShardReader(clone / "data/views")) == shared.n_views
    ran, _ = repro(clone)
    assert "views" not in ran  # its inputs (tiny models, prepared data) are rebuilt identically
    assert {"models", "stitch", "infer"} <= base_names(ran)
    assert lock_md5(clone, "views", "data/views") == shared.views_dir


def test_same_commit_repro_pull_runs_nothing(shared):
    clone = consumer(shared, "repro-pull")
    assert repro(clone, "--pull") == ({"check"}, set())  # check validates params on every repro
    assert len(ShardReader(clone / "data/views")) == shared.n_views


def test_only_the_needed_views_are_pulled(shared, tmp_path, monkeypatch):
    clone = consumer(shared, "granular")
    run(["dvc", "pull", "data/views/shard-00000.jsonl"], clone)  # one file of a stage output
    assert [p.name for p in (clone / "data/views").iterdir()] == ["shard-00000.jsonl"]
    assert len(cache_objects(clone)) == 2  # the .dir manifest and that one file
    monkeypatch.chdir(clone)  # as a user runs `zerovlm export-views` in the repo
    with pytest.raises(ZeroVLMError, match=r"`dvc pull data/views/shard-00000\.tar`"):
        export_views("data/views", tmp_path / "look")
    run(["dvc", "pull", "data/views/shard-00000.tar"], clone)
    assert export_views("data/views", tmp_path / "look") == shared.n_views

    # A prompt knob changed: infer needs the stitched inputs and the VLM, not the views or Zero123.
    shutil.rmtree(clone / "data/views")
    set_param(clone, "infer.view_prompt", [True])
    ran, _ = repro(clone, "--pull", "--allow-missing", "infer")
    assert base_names(ran) == {"check", "infer"}
    assert not (clone / "data/views").exists()
    assert not (clone / "data/models/zero123-tiny").exists()


def test_another_commit_with_the_same_view_inputs_restores_views_from_the_run_cache(shared):
    remote = shared.base / "remote-with-runs"
    run(["dvc", "remote", "add", "--local", "runs", remote], shared.producer)
    assert "pushed" in run(["dvc", "push", "-r", "runs", "--run-cache"], shared.producer).stdout

    # A colleague's branch forked before the run: its dvc.lock is stale, the view inputs are the same.
    clone = consumer(shared, "other-commit")
    run(["git", "checkout", "-q", "-b", "colleague", "HEAD~2"], clone)
    run(["dvc", "remote", "add", "--local", "-d", "shared", remote], clone)
    run(["dvc", "remote", "modify", "--local", "shared", "verify", "true"], clone)
    set_param(clone, "infer.view_prompt", [True])
    git_commit(clone, "a prompt experiment")
    ran, cached = repro(clone, "--pull")
    assert "views" in cached and "views" not in ran
    assert not {"models", "prepare", "pool"} & base_names(ran)  # restored too: nothing upstream ran
    assert "infer" in base_names(ran)
    assert lock_md5(clone, "views", "data/views") == shared.views_dir


def corrupted_remote(shared, name):
    """A copy of the shared remote whose first views shard object is damaged: (remote, md5, object path)."""
    remote = shared.base / name
    shutil.copytree(shared.remote, remote)
    md5, bad_object = views_file_object(remote, shared.views_dir)
    corrupt(bad_object)
    return remote, md5, bad_object


def test_a_corrupted_object_is_detected_reported_and_never_used(shared):
    bad_remote, md5, bad_object = corrupted_remote(shared, "remote-corrupted")
    clone = consumer(shared, "corrupt-pull", bad_remote)
    result = run(["dvc", "pull", "views"], clone, check=False)
    assert result.returncode != 0
    assert "Checkout failed for following targets:\ndata/views" in result.stderr
    assert not (clone / "data/views").exists()
    assert md5 not in {p.parent.name + p.name for p in cache_objects(clone)}  # dropped, not cached

    # `dvc repro --pull` does not use it either: it re-runs the stage (silently) and makes good data.
    rerun = consumer(shared, "corrupt-repro", bad_remote)
    ran, _ = repro(rerun, "--pull", "views")
    assert ran == {"check", "views"}
    assert hashlib.md5((rerun / "data/views/shard-00000.tar").read_bytes()).hexdigest() == md5

    # check-remote names the bad object; --repair deletes it and its manifest; a re-push heals.
    check = run([sys.executable, "-m", "zerovlm.cli", "check-remote", "views"], clone, check=False)
    assert check.returncode == 1
    assert f"corrupt: data/views/shard-00000.tar = object {md5}" in check.stdout
    assert [p.kind for p in check_remote(clone, ["views"], repair=True)] == ["corrupt"]
    assert not bad_object.exists()
    run(["dvc", "remote", "add", "--local", "corrupted", bad_remote], shared.producer)
    run(["dvc", "push", "-r", "corrupted", "views"], shared.producer)
    assert check_remote(clone, ["views"]) == []
    healed = consumer(shared, "corrupt-healed", bad_remote)
    run(["dvc", "pull", "views"], healed)
    assert len(ShardReader(healed / "data/views")) == shared.n_views


def test_without_verify_dvc_silently_uses_a_corrupted_object(shared):
    """DVC's default (verify = false): the trap docs/sharing.md documents, checked so that page stays true."""
    bad_remote, md5, _ = corrupted_remote(shared, "remote-corrupted-noverify")
    clone = consumer(shared, "noverify-pull", bad_remote)
    run(["dvc", "remote", "modify", "--local", "shared", "verify", "false"], clone)
    pulled = run(["dvc", "pull", "views"], clone)  # exit status 0, no warning
    assert "WARNING" not in pulled.stdout + pulled.stderr and "ERROR" not in pulled.stdout + pulled.stderr
    assert hashlib.md5((clone / "data/views/shard-00000.tar").read_bytes()).hexdigest() != md5


def test_an_interrupted_push_completes_when_run_again(shared):
    remote = shared.base / "remote-interrupted"
    run(["dvc", "remote", "add", "--local", "interrupted", remote], shared.producer)
    crashed = run(
        [sys.executable, "-c", CRASHING_DVC, "push", "-r", "interrupted", "-j", "1"],
        shared.producer,
        check=False,
        env={"CRASH_AFTER": "5"},
    )
    assert crashed.returncode == 137
    uploaded = remote_objects(remote)
    assert 0 < len(uploaded) < shared.n_objects and list(remote.rglob(".interrupted.tmp"))
    # Invariant: DVC uploads a directory's manifest only after all its files, so nothing is half there.
    problems = check_remote(shared.producer, remote="interrupted")
    assert problems and {p.kind for p in problems} == {"missing"}
    assert run(["dvc", "pull"], consumer(shared, "before-repush", remote), check=False).returncode != 0

    assert "files pushed" in run(["dvc", "push", "-r", "interrupted"], shared.producer).stdout
    assert check_remote(shared.producer, remote="interrupted") == []
    clone = consumer(shared, "after-repush", remote)
    run(["dvc", "pull"], clone)
    assert repro(clone) == ({"check"}, set())


def test_an_object_deleted_after_a_complete_push_needs_repair(shared):
    """DVC trusts a .dir manifest on the remote: a re-push alone does not restore what it lists."""
    remote = shared.base / "remote-deleted"
    shutil.copytree(shared.remote, remote)
    md5, lost = views_file_object(remote, shared.views_dir)
    lost.unlink()
    run(["dvc", "remote", "add", "--local", "deleted", remote], shared.producer)
    assert "Everything is up to date" in run(["dvc", "push", "-r", "deleted"], shared.producer).stdout
    assert not lost.exists()
    assert [(p.kind, p.path) for p in check_remote(shared.producer, ["views"], "deleted", repair=True)] == [
        ("missing", "data/views/shard-00000.tar")
    ]
    assert "files pushed" in run(["dvc", "push", "-r", "deleted"], shared.producer).stdout
    assert lost.exists()
    clone = consumer(shared, "after-repair", remote)
    run(["dvc", "pull", "views"], clone)


def test_another_repo_imports_a_view_set_and_updates_it(shared):
    # The view set's repo moves on: new views (another step count) on a new commit, pushed.
    source = clone_producer(shared.template, shared.base / "views-source", checkout=True)
    run(["git", "pull", "-q", shared.producer, "HEAD"], source)  # the commit with the shared remote
    other = shared.base / "analysis"
    other.mkdir()
    run(["git", "init", "-q"], other)
    run(["dvc", "init", "-q"], other)
    git_commit(other, "init")
    (other / "data").mkdir()  # dvc import needs the folder of its -o path
    run(["dvc", "import", source, "data/views", "-o", "data/shared-views"], other)
    assert len(ShardReader(other / "data/shared-views")) == shared.n_views
    imported = (other / "data/shared-views.dvc").read_text()
    assert shared.views_dir in imported

    set_param(source, "views.num_inference_steps", 3)
    assert repro(source, "views")[0] == {"check", "views"}
    git_commit(source, "views with 3 steps")
    run(["dvc", "push", "views"], source)
    run(["dvc", "update", "data/shared-views.dvc"], other)
    updated = (other / "data/shared-views.dvc").read_text()
    new_views = lock_md5(source, "views", "data/views")
    assert new_views != shared.views_dir and new_views in updated
    assert len(ShardReader(other / "data/shared-views")) == shared.n_views


def test_check_remote_outside_a_dvc_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ZeroVLMError, match="not inside of a DVC repository"):
        check_remote(tmp_path)
