"""Typed params sections, validated once at stage start.

Each top-level section of params.yaml is one frozen pydantic model. A stage reads only its own section
(dvc.yaml lists exactly those params), so changing one knob re-runs exactly the stages it affects.
An unknown key, a wrong type or a value outside the allowed choices is an error that names the key, the
bad value and the valid keys or choices (with the closest match for typos).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator, model_validator

from zerovlm.configurations import BASELINE_CONFIGURATION, CONFIGURATIONS, STITCHED_CONFIGURATIONS
from zerovlm.io import ZeroVLMError

VIEW_PRESETS = ("left", "right", "top", "random")
PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS as Pillow ships it
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


class DownloadSizeCaps(Section):
    """The largest file accepted per kind, in MB (10^6 bytes), > 0: a body past it is an error, not retried."""
    annotation: float = Field(500.0, gt=0.0)          # VSR JSONL, What'sUp JSON: a few MB
    image: float = Field(100.0, gt=0.0)               # one COCO image: well under 1 MB
    archive: float = Field(20000.0, gt=0.0)           # What'sUp image archives
    checkpoint: float = Field(20000.0, gt=0.0)        # model files fetched by URL: about 100-1000 MB


class DataConfig(Section):
    source: Literal["synthetic", "vsr_random", "vsr_zeroshot", "whatsup_a", "whatsup_b"] = "synthetic"
    split: Literal["train", "dev", "test"] = "test"   # VSR split (What'sUp has one split: test)
    limit: int | None = Field(None, ge=1)             # keep at most this many examples (None: all)
    stratify_by_relation: bool = True                 # when limiting, sample evenly across relations
    seed: int = 0                                     # scene rendering, sampling, option shuffling
    skip_bad: bool = False                            # False: a bad record stops the stage; True: count it
    # Image checks, on every dataset image prepare stores (zerovlm/datasets/prepare.py: image_problem);
    # a failing image is a bad record (skip_bad). Synthetic scenes are rendered, not read: not checked.
    min_image_side_px: int = Field(32, ge=1)          # shorter side below this: refused (1: any size)
    max_aspect_ratio: float = Field(5.0, ge=1.0)      # longer / shorter side above this: refused
    max_image_pixels: int = Field(50_000_000, ge=1, le=PILLOW_MAX_IMAGE_PIXELS)  # width x height above
                                                      # this: refused before decoding; <= Pillow's default
                                                      # limit, which the later stages keep
    blank_max_range: int | None = Field(2, ge=0, le=254)  # blank (refused): every RGB channel's max - min
                                                      # (0..255) <= this after compositing transparency on
                                                      # white, so fully transparent is blank; null: no check
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
    download_deadline_seconds: float = Field(3600.0, gt=0.0, le=86400.0)  # per file, over all attempts;
                                                      # past it the file fails, not retried (resumed next run)
    download_max_mb: DownloadSizeCaps = DownloadSizeCaps()  # size cap per kind of file
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
    revision: str | None = None                       # hub id: branch, tag or commit; null: main. `dvc repro`
                                                      # loads the commit models.lock pins (local folder: unused)
    variant: Literal["zero123", "stable_zero123"] = "zero123"  # pose vector's 4th element: radius or polar
    weights_variant: Literal["fp16", "fp16_ema"] | None = None  # bennyguo/ashawkey files *.fp16[_ema].*;
                                                      # null: the main weights (the only ones kxic/* has)
    presets: tuple[Literal["left", "right", "top", "random"], ...] = VIEW_PRESETS
    custom: tuple[CustomView, ...] = ()               # extra named poses
    image_size_px: int = Field(256, ge=16)            # Zero123 works at 256
    num_inference_steps: int = Field(50, ge=1, le=1000)
    timestep_schedule: Literal["diffusers", "ldm"] = "diffusers"  # ldm: the steps the original runs, one
                                                      # fewer than requested (50 -> 49: 961..1; 75 -> 76: 976..1)
    guidance_scale: float = Field(3.0, ge=1.0)        # 1.0 disables classifier-free guidance
    eta: float = Field(1.0, ge=0.0, le=1.0)           # DDIM eta; the original demo uses 1.0
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1)                 # views per UNet call (halved on CUDA out-of-memory)
    compile: bool = False                             # torch.compile the UNet (CUDA only)
    seed: int = 0                                     # noise and random-view poses, per image and view
    foreground: Literal["none", "border"] = "none"    # none: inputs as they are; border: mask by the border
                                                      # colour, recentre as the demo (zerovlm/views/foreground.py)
    foreground_threshold_rgb: float = Field(30.0, ge=0.0, le=442.0)  # border: Euclidean 8-bit RGB distance
                                                      # (0..441) beyond which a pixel is object

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
class StitchConfig(Section):
    configurations: tuple[str, ...] = tuple(STITCHED_CONFIGURATIONS)  # any of CONFIGURATIONS' keys, e.g.
                                                      # "all-separate" (several images: multi-image VLMs only)
    layout: Literal["grid", "strip"] = "grid"         # grid: 2 columns, paper figure; strip: authors' code
                                                      # (-separate configurations are not stitched)
    gap_px: int = Field(25, ge=0)                     # black gap between panels, strip or grid (authors' code: 25)
    panel_size_px: int = Field(256, ge=16)            # every panel is resized to this square size

    @model_validator(mode="after")
    def _known_configurations(self):
        for name in self.configurations:
            if name not in CONFIGURATIONS:
                raise ValueError(_unknown("configuration", name, CONFIGURATIONS))
        if len(set(self.configurations)) != len(self.configurations):
            raise ValueError(f"configurations: each once, got {list(self.configurations)}")
        if BASELINE_CONFIGURATION not in self.configurations:
            raise ValueError(f"configurations: include {BASELINE_CONFIGURATION!r}, the baseline every "
                             f"configuration is compared with")
        return self


# ---------------------------------------------------------------- infer
class MaxNewTokens(Section):
    generate: int = Field(16, ge=1)                   # greedy answers: a word or two
    paper: int = Field(512, ge=1)                     # the authors' evaluator (its --max_new_tokens default)


class InferConfig(Section):
    backend: str = "llava"                            # a registered backend name (see zerovlm/vlm/registry.py)
    model: str = "llava-hf/llava-1.5-7b-hf"           # hub id or local folder
    revision: str | None = None                       # hub id: branch, tag or commit; null: main. `dvc repro`
                                                      # loads the commit models.lock pins (local folder: unused)
    chat_format: Literal["hub", "vicuna_v1", "llava_v1"] = "hub"  # llava: hub = the model's chat template;
                                                      # vicuna_v1 | llava_v1 = the original LLaVA templates
    image_preprocess: Literal["crop", "pad"] = "crop"  # llava: pad = the original LLaVA pad-to-square
    view_prompt: tuple[bool, ...] = (True, False)     # run with and/or without the view prompt
    question_template: str = "yes_no"                 # a template name in zerovlm/prompts.yaml
    answer_mode: Literal["loglik", "generate", "paper"] = "loglik"  # paper: authors' sampling + "yes" rule
    max_new_tokens: MaxNewTokens = MaxNewTokens()     # per generating answer mode
    temperature: float = Field(0.2, ge=0.0)           # paper mode only; other modes are greedy
    dtype: Literal["float32", "float16", "bfloat16"] = "bfloat16"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(16, ge=1)                 # requests per forward (halved on CUDA out-of-memory)
    compile: bool = False                             # torch.compile the decoder blocks (CUDA only)
    fp8_linear: bool = False                          # decoder Linear layers as FP8 matmuls (CUDA, compute
                                                      # capability >= 8.9; scores change slightly: zerovlm/fp8.py)
    seed: int = 0
    trust_remote_code: bool = False                   # never on by default

    @field_validator("max_new_tokens", mode="before")
    @classmethod
    def _one_per_mode(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"give one value per answer mode, e.g. {{generate: {value}, paper: 512}}")
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
            raise ValueError(_unknown("question_template", self.question_template, templates)
                             + " (zerovlm/prompts.yaml)")
        answers = [a.lower() for a in templates[self.question_template]["true_false"]["answers"]]
        if self.answer_mode == "paper" and answers != ["yes", "no"]:  # the authors' rule looks for "yes"
            raise ValueError(f"answer_mode 'paper' reads a verdict by the authors' \"yes\" rule, but "
                             f"question_template {self.question_template!r} answers {answers}; use "
                             f"question_template yes_no, or answer_mode loglik or generate")
        return self


# ---------------------------------------------------------------- score
class ScoreConfig(Section):
    bootstrap_samples: int = Field(1000, ge=0)        # resamples for 95% intervals (accuracy, difference); 0 disables
    sampling_unit: Literal["cluster", "example"] = "cluster"  # the independent unit of intervals and McNemar:
                                                      # cluster = an image's captions (VSR) or a What'sUp set
    seed: int = 0
    p_adjust: Literal["holm", "none"] = "holm"        # correction of the McNemar p-values within (dataset, VLM, task)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)        # significance level of the marks (* alpha, ** alpha/5, *** alpha/50)


# ---------------------------------------------------------------- grid: datasets x VLMs
GRID_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # becomes part of DVC stage names and folder names


class GridConfig(Section):
    datasets: tuple[str, ...] = Field(min_length=1)  # names of the `datasets` section to run
    vlms: tuple[str, ...] = Field(min_length=1)      # names of the `vlms` section to run

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
    method_configuration: str = "all"                 # compared to the origin baseline in plots and headline
    method_view_prompt: bool = True                   # ... with (true) or without the view prompt
    gallery_examples: int = Field(6, ge=1, le=200)    # sampled examples per dataset in the HTML gallery
    gallery_image_px: int = Field(192, ge=32, le=1024)  # longest side of the gallery's images
    seed: int = 0                                     # gallery sampling

    @model_validator(mode="after")
    def _known_configuration(self):
        if self.method_configuration not in CONFIGURATIONS:
            raise ValueError(_unknown("configuration", self.method_configuration, CONFIGURATIONS))
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
        "conv_vicuna_v1 (\"a curious user\"), used by LLaVA-1.5's evaluation scripts"),
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


def check_report_method(report: ReportConfig, configurations: tuple[str, ...]) -> None:
    """The method the headline and plots compare with the baseline must be one the pipeline runs."""
    if report.method_configuration not in configurations:
        raise ZeroVLMError(f"report.method_configuration {report.method_configuration!r} is not in "
                           f"stitch.configurations {list(configurations)}; pick one of those")


def validate_all(path: str | Path = "params.yaml") -> dict[str, BaseModel]:
    """Every section of a pipeline params file, checked together (what the `check` stage runs first)."""
    params = load_params(path)
    missing = [name for name in SECTIONS if name not in params]
    if missing:  # a stage would silently run on config.py's defaults
        raise ZeroVLMError(f"{path}: no section {', '.join(missing)}; compose the file from conf/ with "
                           f"`zerovlm params --profile demo` (or paper)")
    sections = {name: parse_section(name, params[name]) for name in SECTIONS}
    check_report_method(sections["report"], sections["stitch"].configurations)
    for name in sections["grid"].datasets:  # every dataset and VLM of the grid resolves to a valid section
        dataset_config(params, name)
    for name in sections["grid"].vlms:
        vlm_config(params, name)
    return sections


# ---------------------------------------------------------------- grid instances (issue 7)

def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`; nested mappings merge, everything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict)
                       else value)
    return merged


def _instance(params: dict, catalog: str, base: str, name: str) -> BaseModel:
    entries = parse_section(catalog, params.get(catalog)).root
    if name not in entries:
        raise ZeroVLMError(f"{catalog}: " + _unknown("name", name, entries) + f" (the names under `{catalog}:` "
                           f"in params.yaml)")
    parse_section(base, params.get(base))  # a mistake in the base section is reported under its own name
    model = SECTIONS[base]
    try:
        return model.model_validate(deep_merge(params.get(base) or {}, entries[name]))
    except ValidationError as error:
        raise ZeroVLMError(_explain(f"{catalog}.{name}", model, error)
                           + f"\n  ({catalog}.{name} is merged over the `{base}` section)") from None


def dataset_config(params: dict, name: str) -> DataConfig:
    """The DataConfig of grid dataset `name`: `datasets.<name>` merged over `data`."""
    return _instance(params, "datasets", "data", name)


def vlm_config(params: dict, name: str) -> InferConfig:
    """The InferConfig of grid VLM `name`: `vlms.<name>` merged over `infer`."""
    return _instance(params, "vlms", "infer", name)
