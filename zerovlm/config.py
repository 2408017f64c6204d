"""Typed params sections, validated once at stage start.

Each top-level section of params.yaml is one frozen pydantic model. A stage reads only its own section
(dvc.yaml lists exactly those params), so changing one knob re-runs exactly the stages it affects.
An unknown key, a wrong type or a value outside the allowed choices is an error that names the key, the
bad value and the valid keys or choices (with the closest match for typos).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zerovlm.io import ZeroVLMError

VIEW_PRESETS = ("left", "right", "top", "random")
# Stitched configurations of the paper (figure DataSet.png) plus "top": the panels each one shows.
CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "origin": ("origin",),
    "left": ("left",),
    "right": ("right",),
    "random": ("random",),
    "top": ("top",),
    "no-origin": ("left", "right", "random"),
    "origin+left": ("origin", "left"),
    "origin+left+right": ("origin", "left", "right"),
    "all": ("origin", "left", "right", "random"),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# ---------------------------------------------------------------- prepare
class SyntheticSource(Section):
    num_scenes: int = Field(24, ge=1)           # scenes to render (each yields 1 true/false + 1 choice task)
    min_objects: int = Field(2, ge=2)            # objects per scene, lower bound (>= 2)
    max_objects: int = Field(3, ge=2, le=8)      # objects per scene, upper bound, <= 8 (one colour each)
    image_size_px: int = Field(256, ge=32)       # square canvas side
    relations: tuple[Literal["left of", "right of", "above", "below", "in front of", "behind"], ...] = (
        "left of", "right of", "above", "below")

    @model_validator(mode="after")
    def _objects_range(self):
        if self.max_objects < self.min_objects:
            raise ValueError(f"max_objects ({self.max_objects}) < min_objects ({self.min_objects})")
        if not self.relations:
            raise ValueError("relations: give at least one relation")
        return self


class DataConfig(Section):
    source: Literal["synthetic", "vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b"] = "synthetic"
    split: Literal["train", "dev", "test"] = "test"   # VSR split (What'sUp has one split: test)
    limit: int | None = Field(None, ge=1)             # keep at most this many examples (None: all)
    stratify_by_relation: bool = True                 # when limiting, sample evenly across relations
    seed: int = 0                                     # scene rendering, sampling, option shuffling
    skip_bad: bool = False                            # False: a bad record stops the stage; True: count it
    # Real datasets (vsr_*, whatsup_*). Downloads go under the prepare stage's raw folder only.
    annotations_dir: str | None = None   # local annotation files; None: download. VSR: {split}.jsonl (or
                                         # random/ zeroshot/ subfolders); What'sUp: controlled_*_dataset.json
    images_dir: str | None = None        # local images; None: download. VSR: a COCO folder (train2017/,
                                         # val2017/ or flat); What'sUp: the extracted folder or its .tar.gz
    vsr_annotations_url: str | None = None  # None: pinned GitHub raw URL (sources.yaml); a template with
                                            # {commit} {split_dir} {split}, http(s) only
    coco_images_url: str | None = None   # None: http://images.cocodataset.org; a mirror's http(s) base
    gdrive_url: str | None = None        # None: Google Drive (sources.yaml); a template with {file_id}
    download_workers: int = Field(8, ge=1, le=64)      # concurrent downloads
    download_retries: int = Field(3, ge=0, le=10)      # extra attempts on timeouts, dropped links, 429, 5xx
    retry_backoff_seconds: float = Field(1.0, ge=0.0, le=60.0)  # first wait; doubles per retry
    timeout_seconds: float = Field(30.0, gt=0.0, le=600.0)      # per connect and per read
    synthetic: SyntheticSource = SyntheticSource()


# ---------------------------------------------------------------- tiny models
class ModelsConfig(Section):
    tiny_seed: int = 0                                # seed of the randomly initialised demo models


# ---------------------------------------------------------------- views
class CustomView(Section):
    name: str
    polar_deg: float = Field(ge=-180, le=180)         # camera polar delta; positive moves the camera down
    azimuth_deg: float = Field(ge=-360, le=360)       # camera azimuth delta; positive turns right
    radius: float = Field(0.0, ge=-0.5, le=0.5)       # distance delta in scene units (demo slider range)


class ViewsConfig(Section):
    model: str = "kxic/zero123-165000"                 # hub id or local folder (kxic or bennyguo layout)
    variant: Literal["zero123", "stable_zero123"] = "zero123"  # pose vector's 4th element: radius or polar
    presets: tuple[Literal["left", "right", "top", "random"], ...] = VIEW_PRESETS
    custom: tuple[CustomView, ...] = ()               # extra named poses
    image_size_px: int = Field(256, ge=16)            # Zero123 works at 256
    num_inference_steps: int = Field(50, ge=1, le=1000)
    timestep_schedule: Literal["diffusers", "ldm"] = "diffusers"  # ldm: the original's list (75 -> 77 steps)
    guidance_scale: float = Field(3.0, ge=1.0)        # 1.0 disables classifier-free guidance
    eta: float = Field(1.0, ge=0.0, le=1.0)           # DDIM eta; the original demo uses 1.0
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1)                 # views per UNet call (halved on CUDA out-of-memory)
    compile: bool = False                             # torch.compile the UNet (CUDA only)
    seed: int = 0                                     # noise and random-view poses, per image and view

    @model_validator(mode="after")
    def _unique_names(self):
        names = list(self.presets) + [view.name for view in self.custom]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"view names must be unique, repeated: {duplicates}")
        return self


# ---------------------------------------------------------------- stitch
class StitchConfig(Section):
    configurations: tuple[str, ...] = tuple(CONFIGURATIONS)  # any of CONFIGURATIONS' keys
    layout: Literal["grid", "strip"] = "grid"         # grid: 2 columns, paper figure; strip: authors' code
    gap_px: int = Field(25, ge=0)                     # black gap between strip panels (authors' code: 25)
    panel_size_px: int = Field(256, ge=16)            # every panel is resized to this square size

    @model_validator(mode="after")
    def _known_configurations(self):
        for name in self.configurations:
            if name not in CONFIGURATIONS:
                raise ValueError(_unknown("configuration", name, CONFIGURATIONS))
        return self


# ---------------------------------------------------------------- infer
class InferConfig(Section):
    backend: str = "llava"                            # a registered backend name (see zerovlm/vlm/registry.py)
    model: str = "llava-hf/llava-1.5-7b-hf"           # hub id or local folder
    chat_format: Literal["hub", "llava_original"] = "hub"  # llava_original adds the Vicuna system sentence
    image_preprocess: Literal["crop", "pad"] = "crop"  # pad: the original LLaVA pad-to-square
    view_prompt: tuple[bool, ...] = (True, False)     # run with and/or without the view prompt
    question_template: str = "yes_no"                 # a template name in zerovlm/prompts.yaml
    answer_mode: Literal["loglik", "generate", "paper"] = "loglik"  # paper: authors' sampling + "yes" rule
    max_new_tokens: int = Field(16, ge=1)             # generate / paper modes
    temperature: float = Field(0.2, ge=0.0)           # paper mode only; other modes are greedy
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)                 # requests per forward (halved on CUDA out-of-memory)
    seed: int = 0
    trust_remote_code: bool = False                   # never on by default


# ---------------------------------------------------------------- score
class ScoreConfig(Section):
    bootstrap_samples: int = Field(1000, ge=0)        # for confidence intervals (0 disables)
    seed: int = 0


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "models": ModelsConfig,
    "views": ViewsConfig,
    "stitch": StitchConfig,
    "infer": InferConfig,
    "score": ScoreConfig,
}
TOP_LEVEL_EXTRA = ("profile",)  # written by Hydra composition; informational

S = TypeVar("S", bound=Section)


def _unknown(kind: str, name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid: {', '.join(map(str, valid))}"


def _explain(section: str, model: type[Section], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join([section, *map(str, problem["loc"])])
        if problem["type"] == "extra_forbidden":
            parent = model
            for part in problem["loc"][:-1]:
                field = parent.model_fields.get(str(part))
                parent = field.annotation if field and isinstance(field.annotation, type) else parent
            lines.append(f"{where}: " + _unknown("key", problem["loc"][-1], parent.model_fields))
        else:
            got = f" (got {problem.get('input')!r})" if problem["loc"] else ""
            lines.append(f"{where}: {problem['msg']}{got}")
    return "invalid params:\n  " + "\n  ".join(lines)


def parse_section(name: str, values: Any) -> Section:
    model = SECTIONS[name]
    try:
        return model.model_validate(values or {})
    except ValidationError as error:
        raise ZeroVLMError(_explain(name, model, error)) from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ZeroVLMError(f"{path}: params file not found (run from the repository root)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ZeroVLMError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(params, dict):
        raise ZeroVLMError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    for key in params:
        if key not in SECTIONS and key not in TOP_LEVEL_EXTRA:
            raise ZeroVLMError(f"{path}: " + _unknown("section", key, [*SECTIONS, *TOP_LEVEL_EXTRA]))
    return params


def load_section(name: str, cls: type[S], path: str | Path = "params.yaml") -> S:
    """Read and validate one section of params.yaml (the whole file is checked for unknown sections)."""
    section = parse_section(name, load_params(path).get(name))
    assert isinstance(section, cls)
    return section


def validate_all(path: str | Path = "params.yaml") -> dict[str, Section]:
    params = load_params(path)
    return {name: parse_section(name, params.get(name)) for name in SECTIONS}
