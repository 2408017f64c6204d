"""Sharing view sets through an SSH remote: an OpenSSH server on 127.0.0.1 that the test starts.

The server (tests/dvc_helpers.SshServer) listens on a free port with a temp host key and accepts one
temp client key; the remote is `ssh://<user>@127.0.0.1:<port>/<temp dir>` with `keyfile` in each repo's
config.local, as a user sets it. Skipped, with the reason, without sshd or dvc-ssh.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.dvc_helpers import (
    CRASHING_DVC,
    SshServer,
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
    ssh_unavailable_reason,
)
from zerovlm.sharing import check_remote
from zerovlm.store import ShardReader

UNAVAILABLE = ssh_unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")]


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    server = SshServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(ssh, tmp_path_factory):
    """Producer after a run: SSH remote with verify = true committed, keyfile local, data + run-cache pushed."""
    base = tmp_path_factory.mktemp("ssh-sharing")
    producer = clone_producer(pipeline_template(tmp_path_factory), base / "producer")
    remote = base / "remote"  # the SSH server is this machine: the remote's files are visible here too
    run(["dvc", "remote", "add", "-d", "shared", ssh.url(remote)], producer)
    run(["dvc", "remote", "modify", "shared", "verify", "true"], producer)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", ssh.client_key], producer)
    git_commit(producer, "share over SSH")
    assert "pushed" in run(["dvc", "push", "--run-cache"], producer, env=ssh.env).stdout
    views_dir = lock_md5(producer, "views", "data/views")
    return SimpleNamespace(
        base=base, producer=producer, remote=remote, ssh=ssh, views_dir=views_dir, n_objects=len(remote_objects(remote))
    )


def consumer(shared, name: str, remote: Path | None = None) -> Path:
    """A colleague's fresh clone with their SSH key configured; `remote` points it at another folder."""
    clone = shared.base / name
    run(["git", "clone", "-q", shared.producer, clone], shared.base)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", shared.ssh.client_key], clone)
    if remote is not None:
        run(["dvc", "remote", "modify", "--local", "shared", "url", shared.ssh.url(remote)], clone)
    return clone


def test_same_commit_over_ssh_pulls_views_and_skips_the_stage(shared):
    clone = consumer(shared, "pull-views")
    run(["dvc", "pull", "views"], clone, env=shared.ssh.env)
    manifest = json.loads((shared.remote / "files/md5" / shared.views_dir[:2] / shared.views_dir[2:]).read_text())
    assert len(cache_objects(clone)) == 1 + len(manifest) + 1  # only the views stage's outputs (+ run record)
    ran, _ = repro(clone, "views", env=shared.ssh.env)
    assert ran and "views" not in ran  # only its cheap inputs (tiny models, data) were rebuilt

    everything = consumer(shared, "repro-pull")
    assert repro(everything, "--pull", env=shared.ssh.env) == ({"check"}, set())
    assert len(ShardReader(everything / "data/views")) == len(ShardReader(clone / "data/views"))


def test_another_commit_over_ssh_restores_views_from_the_run_cache(shared):
    clone = consumer(shared, "other-commit")
    run(["git", "checkout", "-q", "-b", "colleague", "HEAD~2"], clone)  # before the run: stale dvc.lock
    # That commit has no remote in .dvc/config yet: the colleague adds it locally, with their key.
    run(["dvc", "remote", "add", "--local", "--force", "-d", "shared", shared.ssh.url(shared.remote)], clone)
    run(["dvc", "remote", "modify", "--local", "shared", "keyfile", shared.ssh.client_key], clone)
    run(["dvc", "remote", "modify", "--local", "shared", "verify", "true"], clone)
    set_param(clone, "infer.view_prompt", [True])
    git_commit(clone, "a prompt experiment")
    ran, cached = repro(clone, "--pull", env=shared.ssh.env)
    assert "views" in cached and "views" not in ran
    assert "infer" in base_names(ran)


def test_a_corrupted_object_over_ssh_is_detected_and_reported(shared):
    bad_remote = shared.base / "remote-corrupted"
    shutil.copytree(shared.remote, bad_remote)
    manifest = json.loads((bad_remote / "files/md5" / shared.views_dir[:2] / shared.views_dir[2:]).read_text())
    md5 = next(entry["md5"] for entry in manifest if entry["relpath"].endswith(".tar"))
    corrupt(bad_remote / "files/md5" / md5[:2] / md5[2:])

    clone = consumer(shared, "corrupt-pull", bad_remote)
    result = run(["dvc", "pull", "views"], clone, check=False, env=shared.ssh.env)
    assert result.returncode != 0 and "data/views" in result.stderr
    assert not (clone / "data/views").exists()
    check = run([sys.executable, "-m", "zerovlm.cli", "check-remote", "views"], clone, check=False, env=shared.ssh.env)
    assert check.returncode == 1 and f"corrupt: data/views/shard-00000.tar = object {md5}" in check.stdout


def test_an_interrupted_push_over_ssh_completes_when_run_again(shared, monkeypatch):
    remote = shared.base / "remote-interrupted"
    run(["dvc", "remote", "add", "--local", "interrupted", shared.ssh.url(remote)], shared.producer)
    run(["dvc", "remote", "modify", "--local", "interrupted", "keyfile", shared.ssh.client_key], shared.producer)
    crashed = run(
        [sys.executable, "-c", CRASHING_DVC, "push", "-r", "interrupted", "-j", "1"],
        shared.producer,
        check=False,
        env={**shared.ssh.env, "CRASH_AFTER": "5"},
    )
    assert crashed.returncode == 137
    assert 0 < len(remote_objects(remote)) < shared.n_objects
    monkeypatch.setenv("HOME", str(shared.ssh.home))
    assert {p.kind for p in check_remote(shared.producer, remote="interrupted")} == {"missing"}

    assert "pushed" in run(["dvc", "push", "-r", "interrupted"], shared.producer, env=shared.ssh.env).stdout
    assert check_remote(shared.producer, remote="interrupted") == []
    clone = consumer(shared, "after-repush", remote)
    run(["dvc", "pull"], clone, env=shared.ssh.env)
    assert repro(clone, env=shared.ssh.env) == ({"check"}, set())
