"""Helpers for tests that run real `dvc` commands in temporary git + DVC repos.

`copy_repo` copies the working tree (git-tracked and untracked, not ignored files) into a temp dir with
the small demo profile below; `run` runs a command with this venv on PATH;
`repro` returns which stages ran and which were restored from the run-cache; `SshServer` starts an
OpenSSH server on 127.0.0.1 with a temporary host key and a temporary authorised key.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# A small demo profile (fewer scenes, steps and configurations) that keeps each `dvc repro` in a copy
# of the repo to seconds; a grid of two synthetic datasets x one tiny VLM (tiny_b is added by a test).
SMALL_DEMO = {
    "grid": {"datasets": ["sparse", "cluttered"], "vlms": ["tiny"]},
    "datasets": {
        "sparse": {"source": "synthetic"},
        "cluttered": {"source": "synthetic", "synthetic": {"min_objects": 4, "max_objects": 5}},
    },
    "vlms": {
        "tiny": {"model": "data/models/llava-1.5-tiny"},
        "tiny_b": {"model": "data/models/llava-1.5-tiny", "chat_format": "llava_v1"},
    },
    "data": {"source": "synthetic", "synthetic": {"num_scenes": 2}},
    "views": {
        "model": "data/models/zero123-tiny",
        "image_size_px": 32,
        "num_inference_steps": 2,
        "dtype": "float32",
        "batch_size": 8,
        "presets": ["left", "right", "random"],
    },
    "stitch": {"panel_size_px": 32, "gap_px": 4, "configurations": ["origin", "left", "all", "all-separate"]},
    "infer": {"model": "data/models/llava-1.5-tiny", "dtype": "float32"},
    "score": {"bootstrap_samples": 50},
    "report": {"gallery_examples": 2, "gallery_image_px": 32},
}
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]


def run(args, cwd, check=True, env=None, timeout=600):
    """Run a command with this venv first on PATH; on failure raise with its whole output."""
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ZEROVLM_LOG": "WARNING",
        **(env or {}),
    }
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def repro(repo, *extra, env=None) -> tuple[set[str], set[str]]:
    """`dvc repro [extra]`: (stages that ran their command, stages restored from the run-cache).

    Names are DVC's, e.g. `views` or `infer@synthetic-llava_tiny`; `base_names` drops the `@...`.
    """
    output = run(["dvc", "repro", *extra], repo, env=env).stdout
    ran = set(re.findall(r"Running stage '([\w@-]+)'", output))
    cached = set(re.findall(r"Stage '([\w@-]+)' is cached - skipping run", output))
    return ran, cached


def base_names(stages: set[str]) -> set[str]:
    return {stage.split("@")[0] for stage in stages}


def git_commit(repo, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", *GIT_ID, "commit", "-q", "--allow-empty", "-m", message], repo)


def copy_repo(dest: Path, demo: dict | None = None) -> Path:
    """A git + DVC copy of the working tree with `demo` (default SMALL_DEMO) composed into params.yaml."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    profile = dest / "conf/profile/demo.yaml"
    profile.write_text("# @package _global_\n" + yaml.safe_dump({"profile": "demo", **(demo or SMALL_DEMO)}))
    run([sys.executable, "-m", "zerovlm.cli", "params", "--profile", "demo"], dest)
    run(["git", "init", "-q"], dest)
    git_commit(dest, "copy")
    return dest


def set_param(repo: Path, dotted_key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted_key.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


_TEMPLATE: dict[str, Path] = {}


def pipeline_template(tmp_path_factory) -> Path:
    """A repo copy where `dvc repro` ran once and was committed; built once per pytest session.

    Tests never change it: they `clone_producer` it (a git clone sharing its DVC cache) or clone that.
    """
    if "repo" not in _TEMPLATE:
        repo = copy_repo(tmp_path_factory.mktemp("template") / "repo")
        ran, _ = repro(repo)
        assert "views" in ran, ran
        git_commit(repo, "pipeline run")
        _TEMPLATE["repo"] = repo
    return _TEMPLATE["repo"]


def clone_producer(template: Path, dest: Path, checkout: bool = False) -> Path:
    """A git clone of the template that uses the template's DVC cache (as if it had run the pipeline)."""
    run(["git", "clone", "-q", template, dest], dest.parent)
    run(["dvc", "cache", "dir", "--local", template / ".dvc" / "cache"], dest)
    if checkout:
        run(["dvc", "checkout", "-q"], dest)
    return dest


def cache_objects(repo: Path) -> list[Path]:
    """The data objects in a repo's local DVC cache."""
    root = repo / ".dvc" / "cache" / "files" / "md5"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def lock_md5(repo: Path, stage: str, path: str) -> str:
    """The md5 that dvc.lock records for one output of a stage."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(out["md5"] for out in lock["stages"][stage]["outs"] if out["path"] == path)


def corrupt(path: Path) -> None:
    """Flip one byte in the middle of a file (DVC makes remote objects read-only)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# `python -c CRASHING_DVC push ...`: dvc that dies like SIGKILL (exit 137, no cleanup) when it starts
# uploading file number CRASH_AFTER + 1; to a local remote it first writes half of that file to a temp
# name, as a copy cut short leaves it.
CRASHING_DVC = """
import errno, os, sys
import dvc_objects.fs.local as local
crash_after, started = int(os.environ["CRASH_AFTER"]), 0
def starting_upload(lpath, half_copy_to=None):
    global started
    started += 1
    if started > crash_after:
        if half_copy_to:
            data = open(lpath, "rb").read()
            open(half_copy_to, "wb").write(data[: len(data) // 2])
        os._exit(137)
local_put = local.FsspecLocalFileSystem.put_file
def put_file(self, lpath, rpath, *args, **kwargs):
    starting_upload(lpath, os.path.join(os.path.dirname(rpath), ".interrupted.tmp"))
    return local_put(self, lpath, rpath, *args, **kwargs)
local.FsspecLocalFileSystem.put_file = put_file
def no_reflink(self, path1, path2):  # on btrfs / XFS a local push would clone files, never calling put_file
    raise OSError(errno.EOPNOTSUPP, "reflink disabled by the test")
local.FsspecLocalFileSystem.reflink = no_reflink
try:
    import dvc_ssh.spec
    ssh_put = dvc_ssh.spec.SSHFileSystem._put_file
    async def ssh_put_file(self, lpath, rpath, *args, **kwargs):
        starting_upload(lpath)
        return await ssh_put(self, lpath, rpath, *args, **kwargs)
    dvc_ssh.spec.SSHFileSystem._put_file = ssh_put_file
except ImportError:
    pass
from dvc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def remote_objects(remote: Path) -> list[Path]:
    """The data objects of a local DVC 3 remote (files/md5/xx/...), without the run-cache."""
    return sorted(p for p in (remote / "files" / "md5").rglob("*") if p.is_file() and not p.name.startswith("."))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ssh_unavailable_reason() -> str | None:
    """Why an SSH round trip cannot run here, or None when it can."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        return "OpenSSH server not installed (Debian: apt-get install openssh-server; .ci/run does this as root)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed (Debian: apt-get install openssh-client)"
    if importlib.util.find_spec("dvc_ssh") is None:
        return "dvc-ssh not installed (pip install -c requirements.lock -e .)"
    return None


class SshServer:
    """sshd on 127.0.0.1:<free port> with a temp host key, accepting one temp client key.

    Commands that talk to it take `env=server.env`: HOME is an empty temp home, so that no
    ~/.ssh/config or key of the machine takes part. (dvc-ssh does not check host keys at all: sshfs
    connects with known_hosts=None; docs/sharing.md says so.)
    """

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = (
            os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        )
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.home = self.dir / "home"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        return {"HOME": str(self.home)}

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def start(self) -> SshServer:
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (self.dir / "authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        self.home.mkdir()
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "MaxSessions 64",
                    "MaxStartups 64",
                    "",
                ]
            )
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=open(self.dir / "sshd.log", "wb")
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port}: {(self.dir / 'sshd.log').read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
