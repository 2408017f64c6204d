"""Typed params sections, validated once at stage start.

Each top-level section of params.yaml is one frozen pydantic model. A stage reads only its own section
(dvc.yaml lists exactly those params), so changing one knob re-runs exactly the stages it affects.
An unknown key, a wrong type or a value outside the allowed choices is an error that names the key, the
bad value and the valid keys or choices (with the closest match for typos).

The schema holds types and ranges only. Every value, and what it means, is stated once in conf/config.yaml
(the Hydra composition root params.yaml is composed from): a key a caller leaves out takes its base value
there, so a partial section (`ViewsConfig(seed=1)`) is the base configuration with that one change.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from zerovlm.io import ZeroVLMError, read_yaml_mapping
from zerovlm.view_configurations import BASELINE_CONFIGURATION, CONFIGURATIONS
from zerovlm.views.poses import AZIMUTH_RANGE_DEG, POLAR_RANGE_DEG, POSE_VARIANTS, RADIUS_RANGE, VIEW_PRESETS
from zerovlm.vlm.llava_conventions import CHAT_FORMATS, IMAGE_PREPROCESSES

PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS as Pillow ships it
CONF_FILE = Path(__file__).resolve().parents[1] / "conf" / "config.yaml"
Dtype = Literal["float32", "float16", "bfloat16"]  # torch dtype names (zerovlm.runtime.DTYPES maps them)
Device = Literal["auto", "cpu", "cuda"]


@functools.cache
def conf_base() -> dict[str, Any]:
    """conf/config.yaml's base values, before a profile: the value of every key a params file leaves out."""
    if not CONF_FILE.is_file():
        raise ZeroVLMError(
            f"{CONF_FILE}: not found. zerovlm reads the params defaults from conf/config.yaml "
            f"next to its package, which a wheel does not carry: install from a clone of the "
            f"repository (pip install -e .)"
        )
    base = yaml.safe_load(CONF_FILE.read_text())
    return {key: value for key, value in base.items() if key != "defaults"}  # defaults: Hydra's profile list


def conf_default(path: str) -> Any:
    """The base value at a dotted path of conf/config.yaml, e.g. conf_default("views.model")."""
    value = conf_base()
    for key in path.split("."):
        value = value[key]
    return value


class Section(BaseModel):
    """A params section; the keys a caller leaves out take conf/config.yaml's base values at `conf_path`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
    conf_path: ClassVar[str | None] = None  # e.g. "views" or "data.synthetic"; None: every key must be given

    @model_validator(mode="before")
    @classmethod
    def _conf_defaults(cls, values: Any) -> Any:
        if cls.conf_path is None or not isinstance(values, dict):  # a list item, or an instance already built
            return values
        return deep_merge(conf_default(cls.conf_path), values)


# ---------------------------------------------------------------- prepare
class SyntheticSource(Section):
    """data.synthetic: the rendered scenes (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "data.synthetic"

    num_scenes: int = Field(ge=1)
    min_objects: int = Field(ge=2)
    max_objects: int = Field(ge=2, le=8)
    image_size_px: int = Field(ge=32)
    relations: tuple[Literal["left of", "right of", "above", "below", "in front of", "behind"], ...]

    @model_validator(mode="after")
    def _objects_range(self):
        if self.max_objects < self.min_objects:
            raise ValueError(f"max_objects ({self.max_objects}) < min_objects ({self.min_objects})")
        if not self.relations:
            raise ValueError("relations: give at least one relation")
        return self


class DownloadSizeCaps(Section):
    """data.download_max_mb: the largest file accepted per kind (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "data.download_max_mb"

    annotation: float = Field(gt=0.0)
    image: float = Field(gt=0.0)
    archive: float = Field(gt=0.0)
    checkpoint: float = Field(gt=0.0)


class DataConfig(Section):
    """The `data` section, shared by every dataset of the grid (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "data"

    source: Literal["synthetic", "vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b", "table"]
    path: str | None
    split: Literal["train", "dev", "test"]
    limit: int | None = Field(ge=1)
    stratify_by_relation: bool
    seed: int
    skip_bad: bool
    min_image_side_px: int = Field(ge=1)
    max_aspect_ratio: float = Field(ge=1.0)
    max_image_pixels: int = Field(ge=1, le=PILLOW_MAX_IMAGE_PIXELS)
    blank_max_range: int | None = Field(ge=0, le=254)
    annotations_dir: str | None
    images_dir: str | None
    vsr_annotations_url: str | None
    coco_images_url: str | None
    coco_object_counts: bool
    coco_annotations: str | None
    coco_annotations_url: str | None
    gdrive_url: str | None
    download_workers: int = Field(ge=1, le=64)
    download_retries: int = Field(ge=0, le=10)
    retry_backoff_seconds: float = Field(ge=0.0, le=60.0)
    timeout_seconds: float = Field(gt=0.0, le=600.0)
    download_deadline_seconds: float = Field(gt=0.0, le=86400.0)
    download_max_mb: DownloadSizeCaps
    synthetic: SyntheticSource

    @model_validator(mode="after")
    def _table_path(self):
        if self.source == "table" and not self.path:
            raise ValueError("path: source 'table' reads a JSONL or CSV file of examples; give its path")
        return self


# ---------------------------------------------------------------- tiny models
class ModelsConfig(Section):
    """The `models` section: the demo's tiny models (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "models"

    tiny_seed: int


# ---------------------------------------------------------------- views
class CustomView(Section):
    """One item of views.custom: a named camera delta (meaning: conf/config.yaml, `custom`)."""

    name: str
    polar_deg: float = Field(ge=POLAR_RANGE_DEG[0], le=POLAR_RANGE_DEG[1])
    azimuth_deg: float = Field(ge=AZIMUTH_RANGE_DEG[0], le=AZIMUTH_RANGE_DEG[1])
    # optional in an item; the one default the schema states, as conf/config.yaml holds no list item
    radius: float = Field(0.0, ge=RADIUS_RANGE[0], le=RADIUS_RANGE[1])


class ViewsConfig(Section):
    """The `views` section: Zero-1-to-3 novel views (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "views"

    model: str
    revision: str | None
    variant: Literal[POSE_VARIANTS]
    weights_variant: Literal["fp16", "fp16_ema"] | None
    presets: tuple[Literal[VIEW_PRESETS], ...]
    custom: tuple[CustomView, ...]
    image_size_px: int = Field(ge=16)
    num_inference_steps: int = Field(ge=1, le=1000)
    timestep_schedule: Literal["diffusers", "ldm"]
    guidance_scale: float = Field(ge=1.0)
    eta: float = Field(ge=0.0, le=1.0)
    dtype: Dtype
    device: Device
    batch_size: int = Field(ge=1)
    compile: bool
    seed: int
    foreground: Literal["none", "border"]
    foreground_threshold_rgb: float = Field(ge=0.0, le=442.0)
    quality_white_min_rgb: int = Field(ge=0, le=255)

    @field_validator("image_size_px")
    @classmethod
    def _whole_latents(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8 (the VAE encodes 8x8 pixels per latent)")
        return value

    @model_validator(mode="after")
    def _unique_names(self):
        names = list(self.presets) + [view.name for view in self.custom]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"view names must be unique, repeated: {duplicates}")
        return self


# ---------------------------------------------------------------- stitch
class GateConfig(Section):
    """stitch.gate: when a "-gated" configuration shows its view (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "stitch.gate"

    min_clip_similarity: float = Field(ge=-1.0, le=1.0)
    min_pixel_std: float = Field(ge=0.0, le=128.0)
    max_background_share: float = Field(ge=0.0, le=1.0)


class StitchConfig(Section):
    """The `stitch` section: the VLM inputs of each view configuration (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "stitch"

    configurations: tuple[str, ...]
    layout: Literal["grid", "strip"]
    gap_px: int = Field(ge=0)
    panel_size_px: int = Field(ge=16)
    gate: GateConfig

    @model_validator(mode="after")
    def _known_configurations(self):
        for name in self.configurations:
            if name not in CONFIGURATIONS:
                raise ValueError(_unknown("configuration", name, CONFIGURATIONS))
        if len(set(self.configurations)) != len(self.configurations):
            raise ValueError(f"configurations: each once, got {list(self.configurations)}")
        if BASELINE_CONFIGURATION not in self.configurations:
            raise ValueError(
                f"configurations: include {BASELINE_CONFIGURATION!r}, the baseline every configuration is compared with"
            )
        return self


# ---------------------------------------------------------------- infer
class MaxNewTokens(Section):
    """infer.max_new_tokens: one limit per generating answer mode (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "infer.max_new_tokens"

    generate: int = Field(ge=1)
    paper: int = Field(ge=1)


class InferConfig(Section):
    """The `infer` section, shared by every VLM of the grid (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "infer"

    backend: str
    model: str
    revision: str | None
    chat_format: Literal[CHAT_FORMATS]
    image_preprocess: Literal[IMAGE_PREPROCESSES]
    view_prompt: tuple[bool, ...]
    question_template: str
    answer_mode: Literal["loglik", "generate", "paper"]
    max_new_tokens: MaxNewTokens
    temperature: float = Field(ge=0.0)
    dtype: Dtype
    device: Device
    batch_size: int = Field(ge=1)
    compile: bool
    fp8_linear: bool
    seed: int
    trust_remote_code: bool

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _one_per_mode(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"give one value per answer mode, e.g. {{generate: {value}, "
                f"paper: {conf_default('infer.max_new_tokens.paper')}}}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self):
        from zerovlm.prompts import load_prompts  # lazy: both modules import this one
        from zerovlm.vlm.registry import BACKENDS

        if len(set(self.view_prompt)) != len(self.view_prompt) or not self.view_prompt:
            raise ValueError(f"view_prompt: give true, false or both, each once; got {list(self.view_prompt)}")
        if self.backend not in BACKENDS:
            raise ValueError(_unknown("backend", self.backend, sorted(BACKENDS)) + " (zerovlm/vlm/registry.py)")
        templates = load_prompts()["question_templates"]
        if self.question_template not in templates:
            raise ValueError(
                _unknown("question_template", self.question_template, templates) + " (zerovlm/prompts.yaml)"
            )
        answers = [a.lower() for a in templates[self.question_template]["true_false"]["answers"]]
        if self.answer_mode == "paper" and answers != ["yes", "no"]:  # the authors' rule looks for "yes"
            raise ValueError(
                f"answer_mode 'paper' reads a verdict by the authors' \"yes\" rule, but "
                f"question_template {self.question_template!r} answers {answers}; use "
                f"question_template yes_no, or answer_mode loglik or generate"
            )
        return self


# ---------------------------------------------------------------- score
class ScoreConfig(Section):
    """The `score` section: intervals and significance (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "score"

    bootstrap_samples: int = Field(ge=0)
    sampling_unit: Literal["cluster", "example"]
    seed: int
    p_adjust: Literal["holm", "none"]
    alpha: float = Field(gt=0.0, lt=1.0)
    quality_bins: int = Field(ge=1, le=100)


# ---------------------------------------------------------------- grid: datasets x VLMs
GRID_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # becomes part of DVC stage names and folder names


class GridConfig(Section):
    """The `grid` section: which datasets x VLMs run (meaning: conf/config.yaml). Always given in full: what runs
    is never left to a default."""

    datasets: tuple[str, ...] = Field(min_length=1)
    vlms: tuple[str, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        for kind, names in (("datasets", self.datasets), ("vlms", self.vlms)):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind}: names must be unique, got {list(names)}")
        return self


class _Catalog(RootModel[dict[str, dict[str, Any]]]):
    """name -> overrides merged over a base section (`data` for datasets, `infer` for vlms)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="after")
    def _names(self):
        for name in self.root:
            if not GRID_NAME.match(name):
                raise ValueError(f"name {name!r}: use lower-case letters, digits and '_' (it names DVC stages)")
        return self


class DatasetsCatalog(_Catalog):
    """datasets.NAME: what differs from `data` for one dataset of the grid (e.g. `source`)."""


class VlmsCatalog(_Catalog):
    """vlms.NAME: what differs from `infer` for one VLM of the grid (e.g. `backend`, `model`, `dtype`)."""


class ReportConfig(Section):
    """The `report` section: plots, headline and gallery (values and meaning: conf/config.yaml)."""

    conf_path: ClassVar[str] = "report"

    method_configuration: str
    method_view_prompt: bool
    gallery_examples: int = Field(ge=1, le=200)
    gallery_image_px: int = Field(ge=32, le=1024)
    seed: int
    selection_datasets: dict[str, str]

    @model_validator(mode="after")
    def _known_configuration(self):
        if self.method_configuration not in CONFIGURATIONS:
            raise ValueError(_unknown("configuration", self.method_configuration, CONFIGURATIONS))
        for evaluated, selecting in self.selection_datasets.items():
            if evaluated == selecting:
                raise ValueError(
                    f"selection_datasets.{evaluated}: a dataset cannot select its own configuration; name the grid "
                    f"dataset of its dev split"
                )
        return self


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataConfig,
    "models": ModelsConfig,
    "views": ViewsConfig,
    "stitch": StitchConfig,
    "infer": InferConfig,
    "score": ScoreConfig,
    "grid": GridConfig,
    "datasets": DatasetsCatalog,
    "vlms": VlmsCatalog,
    "report": ReportConfig,
}
TOP_LEVEL_EXTRA = ("profile",)  # written by Hydra composition; informational

S = TypeVar("S", bound=BaseModel)


def _unknown(kind: str, name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Valid: {', '.join(map(str, valid))}"


# Renamed keys: an older params file is told the new name, not pointed at a look-alike.
RENAMED = {"score.bootstrap_unit": "score.sampling_unit (it now also sets the unit of McNemar's test)"}
# Renamed values, by (section model, key, old value): the new value, named after the original code.
RENAMED_VALUES = {
    (InferConfig, "chat_format", "llava_original"): (
        "'llava_v1' (the same prompt: the original LLaVA conv_llava_v1, \"a curious human\"); 'vicuna_v1' is "
        'conv_vicuna_v1 ("a curious user"), used by LLaVA-1.5\'s evaluation scripts'
    ),
}


def _explain(section: str, model: type[Section], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join([section, *map(str, problem["loc"])])
        value = problem.get("input")
        old_value = (model, ".".join(map(str, problem["loc"])), value if isinstance(value, str) else None)
        if where in RENAMED:
            lines.append(f"{where}: renamed to {RENAMED[where]}")
        elif old_value in RENAMED_VALUES:
            lines.append(f"{where}: {value!r} was renamed to {RENAMED_VALUES[old_value]}")
        elif problem["type"] == "extra_forbidden":
            parent = model
            for part in problem["loc"][:-1]:
                field = parent.model_fields.get(str(part))
                parent = field.annotation if field and isinstance(field.annotation, type) else parent
            lines.append(f"{where}: " + _unknown("key", problem["loc"][-1], parent.model_fields))
        else:
            got = f" (got {problem.get('input')!r})" if problem["loc"] else ""
            lines.append(f"{where}: {problem['msg']}{got}")
    return "invalid params: " + lines[0] if len(lines) == 1 else "invalid params:\n  " + "\n  ".join(lines)


def parse_section(name: str, values: Any) -> BaseModel:
    model = SECTIONS[name]
    try:
        return model.model_validate(values or {})
    except ValidationError as error:
        raise ZeroVLMError(_explain(name, model, error)) from None


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ZeroVLMError(f"{path}: params file not found (run from the repository root)")
    params = read_yaml_mapping(path, "sections", "compose it again with `zerovlm params`")
    for key in params:
        if key not in SECTIONS and key not in TOP_LEVEL_EXTRA:
            raise ZeroVLMError(f"{path}: " + _unknown("section", key, [*SECTIONS, *TOP_LEVEL_EXTRA]))
    return params


def load_section(name: str, cls: type[S], path: str | Path = "params.yaml") -> S:
    """Read and validate one section of params.yaml (the whole file is checked for unknown sections)."""
    section = parse_section(name, load_params(path).get(name))
    assert isinstance(section, cls)
    return section


def check_report_method(report: ReportConfig, configurations: tuple[str, ...]) -> None:
    """The method the headline and plots compare with the baseline must be one the pipeline runs."""
    if report.method_configuration not in configurations:
        raise ZeroVLMError(
            f"report.method_configuration {report.method_configuration!r} is not in "
            f"stitch.configurations {list(configurations)}; pick one of those"
        )


def validate_all(path: str | Path = "params.yaml") -> dict[str, BaseModel]:
    """Every section of a pipeline params file, checked together (what the `check` stage runs first)."""
    params = load_params(path)
    missing = [name for name in SECTIONS if name not in params]
    if missing:  # a stage would silently run on conf/config.yaml's base values, not the profile's
        raise ZeroVLMError(
            f"{path}: no section {', '.join(missing)}; compose the file from conf/ with "
            f"`zerovlm params --profile demo` (or paper)"
        )
    sections = {name: parse_section(name, params[name]) for name in SECTIONS}
    check_report_method(sections["report"], sections["stitch"].configurations)
    for name in sections["grid"].datasets:  # every dataset and VLM of the grid resolves to a valid section
        dataset_config(params, name)
    for name in sections["grid"].vlms:
        vlm_config(params, name)
    return sections


# ---------------------------------------------------------------- grid instances


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`; nested mappings merge, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _instance(params: dict, catalog: str, base: str, name: str) -> BaseModel:
    entries = parse_section(catalog, params.get(catalog)).root
    if name not in entries:
        raise ZeroVLMError(
            f"{catalog}: " + _unknown("name", name, entries) + f" (the names under `{catalog}:` in params.yaml)"
        )
    parse_section(base, params.get(base))  # a mistake in the base section is reported under its own name
    model = SECTIONS[base]
    try:
        return model.model_validate(deep_merge(params.get(base) or {}, entries[name]))
    except ValidationError as error:
        raise ZeroVLMError(
            _explain(f"{catalog}.{name}", model, error) + f"\n  ({catalog}.{name} is merged over the `{base}` section)"
        ) from None


def dataset_config(params: dict, name: str) -> DataConfig:
    """The DataConfig of grid dataset `name`: `datasets.<name>` merged over `data`."""
    return _instance(params, "datasets", "data", name)


def vlm_config(params: dict, name: str) -> InferConfig:
    """The InferConfig of grid VLM `name`: `vlms.<name>` merged over `infer`."""
    return _instance(params, "vlms", "infer", name)
