"""dvc.yaml lists every library file a stage's outputs depend on, so that editing one re-runs the stage, and
every folder and file a stage reads or writes, as the fields of its `Paths` (zerovlm/pipeline/<stage>.py).

A stage's code is the import closure of its script (stages/<name>.py) inside the zerovlm package, plus
the backends the registry imports by name and the data files modules read; each file must be covered
by one of the stage's deps (the file itself or a folder holding it), unless it is listed below as
unable to change any output.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from zerovlm.config import SECTIONS
from zerovlm.vlm.registry import BACKENDS

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_NEUTRAL = {
    "zerovlm/stage.py": "turns an error into one line on stderr; writes nothing",
    "zerovlm/pickles.py": "turns torch's refusal to unpickle a weights file into an error; loads nothing itself",
    "zerovlm/parallel.py": "splits work between processes; the merged outputs are the same bytes (test_parallel)",
    "zerovlm/config.py": "the params schema: a stage's values come from params.yaml, which dvc.yaml lists as "
    "its params (see test_params_yaml_states_every_value_that_changes_outputs)",
}
DATA_FILES = {  # read at run time, not imported
    "zerovlm/prompts.py": ["zerovlm/prompts.yaml"],
    "zerovlm/datasets/sources.py": ["zerovlm/datasets/sources.yaml"],
    "zerovlm/report/gallery.py": ["zerovlm/report/templates/gallery.html.j2"],
}


def _module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """zerovlm modules a file imports, at any depth of its code (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # submodules imported by name
    return {name for name in names if name.split(".")[0] == "zerovlm" and _module_file(name)}


def _closure(script: Path) -> set[str]:
    """Library files a stage script runs, not following the imports of an output-neutral module."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        relative = path.relative_to(ROOT).as_posix()
        if relative in seen:
            continue
        seen.add(relative)
        if relative in OUTPUT_NEUTRAL:
            continue
        names = _imports(path)
        if relative == "zerovlm/vlm/registry.py":  # backends are imported by name when chosen
            names |= {target.split(":")[0] for target in BACKENDS.values()}
        for name in names:  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parts = name.split(".")
            todo += [
                _module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))
            ]
    files = {f for f in seen if f.startswith("zerovlm/")}
    files |= {data for module in files for data in DATA_FILES.get(module, [])}
    # a package's __init__ holding only a docstring (and __version__) cannot change an output
    return {f for f in files if not (f.endswith("__init__.py") and _is_docstring_only(ROOT / f))}


def _is_docstring_only(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return all(
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        or isinstance(node, ast.Assign)
        and [t.id for t in node.targets] == ["__version__"]
        for node in tree.body
    )


def _stages() -> list[tuple[str, Path, list[str]]]:
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stages = []
    for name, stage in spec.items():
        body = stage.get("do", stage)
        script = re.search(r"python -m stages\.(\w+)", body["cmd"]).group(1)
        stages.append((name, ROOT / "stages" / f"{script}.py", body["deps"]))
    return stages


@pytest.mark.parametrize("name, script, deps", _stages(), ids=[s[0] for s in _stages()])
def test_every_library_file_a_stage_runs_is_one_of_its_deps(name, script, deps):
    code_deps = [d.rstrip("/") for d in deps if d.startswith(("zerovlm", "stages"))]
    uncovered = sorted(
        f for f in _closure(script) - set(OUTPUT_NEUTRAL) if not any(f == d or f.startswith(d + "/") for d in code_deps)
    )
    assert not uncovered, f"dvc.yaml stage {name!r}: add to its deps {uncovered}"
    assert script.relative_to(ROOT).as_posix() in code_deps


def test_check_runs_before_every_stage_and_each_consumer_reads_only_its_own_inputs_file(tmp_path):
    """dvc.yaml expanded by DVC's parser for the demo grid: `check` (always run) is upstream of every stage,
    and each stage that reads something from outside the repo depends on exactly its own data/inputs file."""
    import shutil

    import networkx as nx
    from dvc.repo import Repo

    Repo.init(tmp_path, no_scm=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    datasets, vlms = params["grid"]["datasets"], params["grid"]["vlms"]
    own = {
        "models": "models.json",
        "views": "views.json",
        **{f"prepare@{d}": f"prepare-{d}.json" for d in datasets},
        **{f"infer@{d}-{v}": f"vlm-{v}.json" for d in datasets for v in vlms},
    }
    with Repo(str(tmp_path)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        stages = {stage.name: stage for stage in graph}
        check = stages.pop("check")
        assert check.always_changed
        assert {str(out): (out.use_cache, out.persist) for out in check.outs} == {
            "data/inputs": (False, False),
            "models.lock": (False, True),
        }
        assert [name for name, stage in stages.items() if not nx.has_path(graph, stage, check)] == []
        inputs = {
            name: [d.def_path.removeprefix("data/inputs/") for d in stage.deps if d.def_path.startswith("data/inputs")]
            for name, stage in stages.items()
        }
    assert inputs == {name: [own[name]] if name in own else [] for name in stages}


def test_params_yaml_states_every_value_that_changes_outputs():
    """A default in config.py would reach a stage only for a key params.yaml leaves out (the catalog
    entries `datasets.*` and `vlms.*` are merged over the full `data` and `infer` sections)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = {name: cls for name, cls in SECTIONS.items() if name not in ("datasets", "vlms")}  # catalogs
    missing = {name: sorted(set(cls.model_fields) - set(params[name])) for name, cls in sections.items()}
    assert not any(missing.values()), f"params.yaml leaves these to config.py's defaults: {missing}"


NON_PATH_FLAGS = {"dataset", "vlm"}  # grid names, not paths
# Paths fields whose path is neither a dep nor an out of the stage, and why.
UNDECLARED_PATHS = {
    ("check", "built_models"): "the models stage's output: check only tells a model folder under it from other "
    "local folders, reading nothing inside (models runs after check)",
    ("prepare", "raw"): "the download cache shared by datasets: downloads are pinned by URL and checksum "
    "(zerovlm/datasets/sources.yaml), a local folder by data/inputs/prepare-<dataset>.json",
}
# Deps that no Paths field names, and why: they re-run the stage when they change, the stage does not read them.
UNREAD_DEPS = {
    r"data/inputs/models\.json": "the models stage's inputs record: constant, its change re-runs the stage",
    r"data/inputs/prepare-\$\{item\}\.json": "local dataset files by hash or stat: prepare reads the files "
    "themselves, from the params",
    r"data/models/[\w.-]+": "the tiny model folder the params name (views.model, vlms.<name>.model)",
}


def _stage_paths() -> list[tuple[str, dict[str, str], list[str]]]:
    """(stage, {flag without dashes: value} of its cmd, its declared deps, outs and metrics), as dvc.yaml writes
    them (unexpanded `${item}`)."""
    stages = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        tokens = shlex.split(body["cmd"])
        flags = {token[2:]: value for token, value in zip(tokens, tokens[1:]) if token.startswith("--")}
        declared = [
            next(iter(entry)) if isinstance(entry, dict) else entry
            for key in ("deps", "outs", "metrics")
            for entry in body.get(key, [])
        ]
        stages.append((name, flags, declared))
    return stages


def _covers(path: str, declared: str) -> bool:
    return declared == path or declared.startswith(path + "/")


@pytest.mark.parametrize("name, flags, declared", _stage_paths(), ids=[s[0] for s in _stage_paths()])
def test_each_stage_paths_are_the_paths_dvc_yaml_passes_and_declares(name, flags, declared):
    """zerovlm.pipeline.<stage>.Paths has one field per path flag of the stage's cmd (stages/<stage>.py turns each
    field into its flag); each value is a dep or an out (or a folder of them); each data dep or out is a field's."""
    paths = importlib.import_module(f"zerovlm.pipeline.{name}").Paths
    fields = {field.name: field for field in dataclasses.fields(paths)}
    passed = {flag.replace("-", "_"): value for flag, value in flags.items() if flag not in NON_PATH_FLAGS}
    assert sorted(set(passed) - set(fields)) == [], f"dvc.yaml stage {name!r} passes flags its Paths lacks"
    values = {
        field: passed.get(field, None if spec.default is dataclasses.MISSING else spec.default)
        for field, spec in fields.items()
    }
    assert [field for field, value in values.items() if value is None] == [], (
        f"dvc.yaml stage {name!r}: its cmd passes no path for these Paths fields"
    )
    undeclared = sorted(
        field
        for field, value in values.items()
        if not any(_covers(str(value), d) for d in declared) and (name, field) not in UNDECLARED_PATHS
    )
    assert undeclared == [], f"dvc.yaml stage {name!r}: these Paths fields are neither deps nor outs"
    data = [d for d in declared if not d.startswith(("zerovlm/", "stages/"))]
    unnamed = sorted(
        d
        for d in data
        if not any(_covers(str(value), d) for value in values.values())
        and not any(re.fullmatch(pattern, d) for pattern in UNREAD_DEPS)
    )
    assert unnamed == [], f"dvc.yaml stage {name!r}: no Paths field names these deps or outs"
    assert f"stage_arguments(__doc__, {name}.Paths" in (ROOT / "stages" / f"{name}.py").read_text()
