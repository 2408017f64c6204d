"""What produced the numbers: library versions, git revision, and each grid instance's provenance."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = (
    "zerovlm",
    "torch",
    "transformers",
    "diffusers",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "pillow",
    "pydantic",
    "dvc",
    "hydra-core",
    "scipy",
)


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries the pipeline uses (read from metadata: nothing is imported)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(root: Path = Path(".")) -> dict[str, str | bool | None]:
    """The commit checked out and whether tracked files other than dvc.lock, params.yaml and metrics/ had
    changes (None outside a git repo)."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    # Pipeline bookkeeping (dvc.lock, params.yaml under `dvc exp run -S`, metrics/) changes during every
    # run; what matters is whether the code and configuration files differ from the revision.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!params.yaml", ":!metrics")
    return {"revision": revision, "code_dirty": None if status is None else bool(status)}
