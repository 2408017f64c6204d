"""Bad input at the stage boundary: one clear `error:` line, exit status 2, no finished-looking output."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_store import fill_disk_after
from tests.views_fixtures import make_prepared, tiny_models, views_config  # noqa: F401  (pytest fixture)
from zerovlm.config import DataConfig, SyntheticSource
from zerovlm.datasets.table import write_table
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import prepare, views
from zerovlm.stage import run_stage
from zerovlm.views.tiny import build_tiny_zero123

ROOT = Path(__file__).resolve().parents[1]


def _params(tmp_path, **sections):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, values in sections.items():
        params[name].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _stage(name, *args):
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ZEROVLM_LOG": "WARNING"},
    )
    return result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare.run(prepare.Paths(out=folder), DataConfig(synthetic=SyntheticSource(num_scenes=2)))
    return folder


def test_missing_model_folder(tmp_path, prepared):
    params = _params(tmp_path, views={"model": str(tmp_path / "no-such-model")})
    code, message = _stage("views", "--params", params, "--prepared", prepared, "--out", tmp_path / "views")
    assert code == 2 and message.startswith("error: ") and "no-such-model" in message
    assert "zerovlm build-tiny-models" in message
    assert not (tmp_path / "views").exists()


def test_unreadable_image_names_the_file_and_example(tmp_path, prepared):
    broken = tmp_path / "prepared"
    subprocess.run(["cp", "-r", str(prepared), str(broken)], check=True)
    for image in (broken / "images").iterdir():
        image.write_bytes(b"not an image")
    build_tiny_zero123(tmp_path / "zero123", seed=0)
    params = _params(tmp_path, views={"model": str(tmp_path / "zero123")})
    code, message = _stage("views", "--params", params, "--prepared", broken, "--out", tmp_path / "views")
    assert code == 2 and "images/" in message and "synthetic/test/" in message
    assert not (tmp_path / "views").exists()


def test_invalid_param_value(tmp_path, prepared):
    params = _params(tmp_path, views={"guidance_scale": "strong"})
    code, message = _stage("views", "--params", params, "--prepared", prepared, "--out", tmp_path / "views")
    assert code == 2 and "views.guidance_scale: Input should be a valid number" in message


def test_missing_prepared_table(tmp_path):
    code, message = _stage("views", "--prepared", tmp_path / "nothing", "--out", tmp_path / "views")
    assert code == 2 and "examples.jsonl: file not found" in message


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(ZeroVLMError, match="the dataset selection is empty"):
        write_table(tmp_path, [])
    assert not (tmp_path / "examples.jsonl").exists()


def offline_with_an_empty_hub_cache(monkeypatch, tmp_path):
    """As with no network (minus the retries), and without the weights a researcher may have cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_unreachable_hub_id_names_the_model_and_the_fix(monkeypatch, tmp_path):
    from zerovlm.views.checkpoints import load_components

    offline_with_an_empty_hub_cache(monkeypatch, tmp_path)
    with pytest.raises(ZeroVLMError, match=r"cannot reach the Hugging Face hub for 'kxic/zero123-105000'"):
        load_components("kxic/zero123-105000")


def test_unreachable_vlm_hub_id_fails_at_once_naming_the_model(monkeypatch, tmp_path):
    from zerovlm.config import InferConfig
    from zerovlm.vlm.registry import load_backend

    offline_with_an_empty_hub_cache(monkeypatch, tmp_path)
    with pytest.raises(ZeroVLMError, match=r"cannot fetch config.json of hub repo 'llava-hf/llava-1.5-7b-hf'"):
        load_backend(InferConfig(model="llava-hf/llava-1.5-7b-hf", device="cpu"))


def test_ctrl_c_is_one_line_saying_what_is_kept(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_stage(interrupted)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted: this stage published no output")


def _stage_error(capsys, main) -> str:
    """Run `main` as a stage does; the one line it printed (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_full_disk_while_writing_views_is_one_line_and_a_rerun_resumes(tmp_path, tiny_models, monkeypatch, capsys):
    prepared, out = tmp_path / "prepared", tmp_path / "views"
    make_prepared(prepared, num_images=3)
    cfg = views_config(tiny_models["kxic"])
    fill_disk_after(monkeypatch, finished_tars=1)
    line = _stage_error(capsys, lambda: views.run(views.Paths(prepared=prepared, out=out), cfg, shard_size=4))
    partial = tmp_path / ".views.partial" / "part-000-of-001"
    assert (
        line.startswith(f"error: {partial / 'shard-00001.tar'}: No space left on device; free space on that disk")
        and "a re-run resumes" in line
    )
    assert sorted(p.name for p in partial.iterdir()) == ["shard-00000.jsonl", "shard-00000.tar"]
    monkeypatch.undo()
    summary = views.run(views.Paths(prepared=prepared, out=out), cfg, shard_size=4)
    assert summary["views_reused"] == 4 and summary["views_generated"] == 8


def read_only(folder: Path, monkeypatch) -> None:
    """Make `folder` refuse new entries. chmod does not bind root: then refuse them as the kernel does for any
    other user, in os.mkdir and os.open (how pathlib and tempfile create folders and files)."""
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.mkdir()
    except PermissionError:
        return
    probe.rmdir()

    def refusing(create):
        def guarded(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and Path(path).parent == folder:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return create(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(os, "mkdir", refusing(os.mkdir))
    monkeypatch.setattr(os, "open", refusing(os.open))


def test_a_read_only_data_folder_is_one_line_naming_the_folder(tmp_path, tiny_models, monkeypatch, capsys):
    data = tmp_path / "data"
    make_prepared(data / "prepared", num_images=1)
    read_only(data, monkeypatch)
    try:
        views_line = _stage_error(
            capsys,
            lambda: views.run(
                views.Paths(prepared=data / "prepared", out=data / "views"), views_config(tiny_models["kxic"])
            ),
        )
        prepare_line = _stage_error(
            capsys,
            lambda: prepare.run(prepare.Paths(out=data / "more"), DataConfig(synthetic=SyntheticSource(num_scenes=1))),
        )
    finally:
        data.chmod(0o755)
    fix = f"let this user read and write there (e.g. `chmod u+w {data}`) and re-run"
    assert views_line.startswith(f"error: {data / '.views.partial'}: Permission denied; {fix}")
    assert prepare_line.startswith(f"error: {data / 'more'}: Permission denied; {fix}")  # the output, not a temporary
    assert sorted(p.name for p in data.iterdir()) == ["prepared"]
