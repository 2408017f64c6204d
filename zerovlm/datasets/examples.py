"""The normalised examples of one dataset source, and their images stored once each by content.

`build_examples` is what the prepare stage (zerovlm/pipeline/prepare.py) calls: it stores each image as
`images/<image_id>.*` (the sha256 prefix of its bytes) under the folder it is given and returns the examples;
the stage writes the table and its summary.

Real datasets are parsed into drafts first, then selected (limit, seeded sample stratified by
relation), and only the selected examples' images are fetched: a 50-example run downloads 50 images.
Downloads go under `raw_dir` (default: <out_dir's parent>/raw), never elsewhere. Every real image is
checked once, as it is stored (`image_problem`): wherever it came from (a download, data.images_dir, an
archive, a file put in the raw folder by hand), one that fails is a bad record of its example.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from zerovlm.config import PILLOW_MAX_IMAGE_PIXELS, DataConfig
from zerovlm.datasets import synthetic
from zerovlm.datasets.sources import BadRecords, Draft
from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError, image_as_rgb, pillow_pixel_limit, sha256_bytes
from zerovlm.store import encode_png

IMAGES_FOLDER = "images"
IMAGE_ID_HEX = 16


# ---------------------------------------------------------------- image store (content-hashed)
def store_image_bytes(prepared_dir: Path, data: bytes, extension: str) -> tuple[str, str]:
    """Write `data` once under images/; return (image_id, image_file relative to prepared_dir)."""
    image_id = sha256_bytes(data)[:IMAGE_ID_HEX]
    image_file = f"{IMAGES_FOLDER}/{image_id}.{extension}"
    target = prepared_dir / image_file
    if not target.exists():  # same content -> same name: shared images are stored once
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return image_id, image_file


def store_image_file(prepared_dir: Path, path: Path) -> tuple[str, str]:
    """Keep an RGB JPEG's original bytes (no re-encoding loss); convert anything else to an RGB PNG."""
    with Image.open(path) as image:
        if image.format == "JPEG" and image.mode == "RGB":
            return store_image_bytes(prepared_dir, path.read_bytes(), "jpg")
        return store_image_bytes(prepared_dir, encode_png(image_as_rgb(image, str(path))), "png")


# ---------------------------------------------------------------- image checks
def image_problem(path: Path, cfg: DataConfig) -> tuple[str, str] | None:
    """(check, problem) for the first check the image at `path` fails, or None; the check is named by the
    param that sets it, and the problem states the value and the param to change.

    Sizes are read from the header, so an image too large is never decoded. Run it inside
    `pillow_pixel_limit(cfg.max_image_pixels)`: Pillow then refuses more than twice the limit before it
    even reports a size. Blank means every RGB channel's max - min is <= data.blank_max_range after
    compositing transparency on white (image_as_rgb), so a fully transparent image is blank too.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            size, shorter = f"{width}x{height} px", min(width, height)
            ratio = max(width, height) / shorter if shorter else float("inf")
            if width * height > cfg.max_image_pixels:
                return "max_image_pixels", (
                    f"{size} = {width * height} pixels > data.max_image_pixels="
                    f"{cfg.max_image_pixels}; raise it (at most {PILLOW_MAX_IMAGE_PIXELS}) "
                    f"to accept the image"
                )
            if ratio > cfg.max_aspect_ratio:  # Zero123 resizes its input to a square: a strip comes out squashed
                return "max_aspect_ratio", (
                    f"{size}: aspect ratio {ratio:.2f} > data.max_aspect_ratio="
                    f"{cfg.max_aspect_ratio:g}; raise it to accept the image"
                )
            if shorter < cfg.min_image_side_px:
                return "min_image_side_px", (
                    f"{size}: shorter side {shorter} < data.min_image_side_px="
                    f"{cfg.min_image_side_px}; lower it to accept the image"
                )
            image.load()
            rgb = image_as_rgb(image, str(path))
    except Image.DecompressionBombError:
        return "max_image_pixels", (
            f"more than {2 * cfg.max_image_pixels} pixels (Pillow stops reading at twice "
            f"data.max_image_pixels={cfg.max_image_pixels}); raise it (at most "
            f"{PILLOW_MAX_IMAGE_PIXELS}) to accept a smaller image"
        )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ZeroVLMError) as error:
        return "readable", f"not a readable image ({error}); replace the file, or delete a downloaded one"
    spread = max(high - low for low, high in rgb.getextrema())
    if cfg.blank_max_range is not None and spread <= cfg.blank_max_range:
        return "blank_max_range", (
            f"{size}, blank: every channel's max - min is {spread} <= "
            f"data.blank_max_range={cfg.blank_max_range} after compositing transparency "
            f"on white; set it to null to accept blank images"
        )
    return None


# ---------------------------------------------------------------- selection
def select_drafts(drafts: list[Draft], limit: int | None, seed: int, stratify: bool) -> list[Draft]:
    """At most `limit` examples, whole units at a time, in their original order.

    Stratified: units are drawn round-robin across relations (each relation's units in a seeded
    shuffle), so relations are as even as their sizes allow. Otherwise a seeded uniform sample.
    """
    if limit is None or len(drafts) <= limit:
        return drafts
    units: dict[str, list[Draft]] = defaultdict(list)
    for draft in drafts:
        units[draft.unit].append(draft)
    rng = random.Random(f"zerovlm-select:{seed}")
    strata: dict[str, list[str]] = defaultdict(list)
    for unit, members in units.items():
        strata[members[0].stratum if stratify else "all"].append(unit)
    queues = {name: rng.sample(names, len(names)) for name, names in sorted(strata.items())}
    order = rng.sample(sorted(queues), len(queues))  # a limit below the number of relations: seeded pick
    chosen, size = set(), 0
    while any(queues.values()):
        for name in order:
            if not queues[name]:
                continue
            unit = queues[name].pop(0)
            if size + len(units[unit]) <= limit:
                chosen.add(unit)
                size += len(units[unit])
        if size >= limit:
            break
    return [draft for draft in drafts if draft.unit in chosen]


# ---------------------------------------------------------------- synthetic scenes
def synthetic_examples(cfg: DataConfig, prepared_dir: Path) -> tuple[list[Example], dict[str, Any]]:
    relations = tuple(cfg.synthetic.relations)
    examples: list[Example] = []
    for scene, image in synthetic.scenes(cfg.synthetic, cfg.seed):
        image_id, image_file = store_image_bytes(prepared_dir, encode_png(image), "png")
        stem = f"synthetic/{cfg.split}/{scene.index:05d}"
        source = {
            "scene": scene.index,
            "relation_set": scene.relation_set,
            "gold_relation": scene.relation,
            "subject": scene.subject.name,
            "object": scene.reference.name,
            "objects": [obj.to_record() for obj in scene.objects],
        }
        common = dict(
            dataset="synthetic",
            split=cfg.split,
            image_id=image_id,
            image_file=image_file,
            num_objects=len(scene.objects),
        )
        text, is_true, stated = synthetic.true_false_task(scene, relations)
        examples.append(
            Example(
                example_id=f"{stem}/tf",
                task="true_false",
                caption=text,
                options=("yes", "no"),
                answer_index=0 if is_true else 1,
                relation=stated,
                source={**source, "label": int(is_true)},
                **common,
            )
        )
        upstream, shown, gold = synthetic.choice_task(scene, cfg.seed)
        examples.append(
            Example(
                example_id=f"{stem}/mc",
                task="multiple_choice",
                caption="",
                options=tuple(shown),
                answer_index=gold,
                relation=scene.relation,
                source={**source, "caption_options": upstream},
                **common,
            )
        )
    # Selection works on drafts; a scene's two examples are kept or dropped together.
    drafts = [
        Draft(
            fields={"example_id": e.example_id},
            image=None,
            unit=str(e.source["scene"]),
            stratum=e.source["gold_relation"],
        )
        for e in examples
    ]
    kept = {d.example_id for d in select_drafts(drafts, cfg.limit, cfg.seed, cfg.stratify_by_relation)}
    _remove_unused_images(prepared_dir, [e for e in examples if e.example_id in kept])
    return [e for e in examples if e.example_id in kept], {"scenes_rendered": cfg.synthetic.num_scenes}


def _remove_unused_images(prepared_dir: Path, examples: list[Example]) -> None:
    used = {e.image_file for e in examples}
    for path in (prepared_dir / IMAGES_FOLDER).glob("*"):
        if f"{IMAGES_FOLDER}/{path.name}" not in used:
            path.unlink()


# ---------------------------------------------------------------- real datasets
def _source_module(source: str):
    if source == "table":
        from zerovlm.datasets import user_table

        return user_table
    if source.startswith("vsr_"):
        from zerovlm.datasets import vsr

        return vsr
    from zerovlm.datasets import whatsup

    return whatsup


def real_examples(
    cfg: DataConfig, prepared_dir: Path, raw_dir: Path, bad: BadRecords
) -> tuple[list[Example], dict[str, Any]]:
    module = _source_module(cfg.source)
    drafts, checksums = module.load_drafts(cfg, raw_dir, bad)
    available = len(drafts)
    drafts = select_drafts(drafts, cfg.limit, cfg.seed, cfg.stratify_by_relation)
    files, image_checksums = module.image_files(cfg, raw_dir, drafts, bad)  # relative name -> local file
    stored: dict[str, tuple[str, str]] = {}
    refused: dict[str, tuple[str, str]] = {}  # relative name -> (check, problem)
    examples = []
    for draft in drafts:
        relative = draft.image.relative
        path = files.get(relative)
        if path is None:  # reported (strictly or as a skip) by image_files
            continue
        if relative not in stored and relative not in refused:
            problem = image_problem(path, cfg)  # once per image: captions sharing it share the verdict
            if problem is None:
                stored[relative] = store_image_file(prepared_dir, path)
            else:
                refused[relative] = problem
        if relative in refused:
            check, problem = refused[relative]
            bad.report_draft(draft, module.IMAGE_FIELD, f"{path}: {problem}", check)
            continue
        image_id, image_file = stored[relative]
        examples.append(Example(image_id=image_id, image_file=image_file, **draft.fields))
    return examples, {"available": available, "source_checksums": {**checksums, **image_checksums}}


# ---------------------------------------------------------------- the examples of one source
def summarise(examples: Iterable[Example]) -> dict[str, Any]:
    examples = list(examples)
    per_relation: dict[str, Counter] = defaultdict(Counter)
    per_task: dict[str, Counter] = defaultdict(Counter)
    labels: Counter = Counter()
    for e in examples:
        per_relation[e.dataset][e.relation] += 1
        per_task[e.dataset][e.task] += 1
        if e.task == "true_false":
            labels["true" if e.answer_index == 0 else "false"] += 1
    return {
        "examples": len(examples),
        "images": len({e.image_id for e in examples}),
        "per_dataset_relation": {d: dict(sorted(c.items())) for d, c in sorted(per_relation.items())},
        "per_dataset_task": {d: dict(sorted(c.items())) for d, c in sorted(per_task.items())},
        "true_false_labels": dict(sorted(labels.items())),
    }


def build_examples(cfg: DataConfig, prepared_dir: Path, raw_dir: Path) -> tuple[list[Example], dict[str, Any]]:
    """The selected examples of `cfg.source`, their images stored under prepared_dir/images/, and the summary
    of what was built (source, selection, counts, checksums of the source files, skipped records).

    raw_dir: where downloads are kept between runs.
    """
    bad = BadRecords(skip_bad=cfg.skip_bad)
    (prepared_dir / IMAGES_FOLDER).mkdir(exist_ok=True)
    with pillow_pixel_limit(cfg.max_image_pixels):
        if cfg.source == "synthetic":
            examples, details = synthetic_examples(cfg, prepared_dir)
        else:
            examples, details = real_examples(cfg, prepared_dir, raw_dir, bad)
    if not examples:
        raise ZeroVLMError(
            f"data.source={cfg.source}: no example left after selection and skips "
            f"({len(bad.records)} bad records); check data.split, data.limit, data.skip_bad"
        )
    summary = {
        "source": cfg.source,
        "split": cfg.split,
        "selection": {"limit": cfg.limit, "stratify_by_relation": cfg.stratify_by_relation, "seed": cfg.seed},
        **details,
        **summarise(examples),
        "skipped": bad.summary(),
    }
    return examples, summary
