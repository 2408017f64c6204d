"""Synthetic scenes: determinism, geometric truth of every relation, balance, the 4-option task."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from zerovlm.config import DataConfig, SyntheticSource, parse_section
from zerovlm.datasets import synthetic
from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError
from zerovlm.pipeline import prepare

ALL_RELATIONS = ("left of", "right of", "above", "below", "in front of", "behind")


def _config(**synthetic_overrides) -> DataConfig:
    return DataConfig(source="synthetic", synthetic=SyntheticSource(**synthetic_overrides))


def _pixel_box(pixels: np.ndarray, colour: str):
    """The box of the pixels drawn in one of the colour's fills, or None if none is visible."""
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    mask = np.isin(packed, [(r << 16) | (g << 8) | b for r, g, b in synthetic.shades(colour).values()])
    if not mask.any():
        return None, mask
    ys, xs = np.nonzero(mask)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), mask


def _overlap(a0, a1, b0, b1) -> int:
    return min(a1, b1) - max(a0, b0)


def _holds(relation: str, pixels: np.ndarray, scene) -> bool:
    """Decide `relation` from the rendered pixels (and, for depth, where each object stands)."""
    (sx0, sy0, sx1, sy1), subject_mask = _pixel_box(pixels, scene.subject.colour)
    (rx0, ry0, rx1, ry1), reference_mask = _pixel_box(pixels, scene.reference.colour)
    if relation == "left of":
        return sx1 <= rx0 and _overlap(sy0, sy1, ry0, ry1) > 0
    if relation == "right of":
        return rx1 <= sx0 and _overlap(sy0, sy1, ry0, ry1) > 0
    if relation == "above":
        return sy1 <= ry0 and _overlap(sx0, sx1, rx0, rx1) > 0
    if relation == "below":
        return ry1 <= sy0 and _overlap(sx0, sx1, rx0, rx1) > 0
    subject_in_front = relation == "in front of"
    front, back = (scene.subject, scene.reference) if subject_in_front else (scene.reference, scene.subject)
    front_mask = subject_mask if subject_in_front else reference_mask
    # Nearer on a ground plane: stands lower in the picture and is drawn larger ...
    stands_nearer = front.box[3] > back.box[3] and front.box[2] - front.box[0] > back.box[2] - back.box[0]
    # ... and covers part of the farther one's box; they overlap horizontally, so left/right are false.
    x0, y0, x1, y1 = back.box
    occludes = bool(front_mask[y0:y1, x0:x1].any())
    return stands_nearer and occludes and _overlap(sx0, sx1, rx0, rx1) >= 0.5 * min(sx1 - sx0, rx1 - rx0)


@pytest.fixture(scope="module")
def many_scenes():
    cfg = SyntheticSource(num_scenes=96, min_objects=2, max_objects=6, relations=ALL_RELATIONS)
    return [(scene, np.asarray(image)) for scene, image in synthetic.scenes(cfg, seed=7)]


def test_every_relation_holds_geometrically_and_its_alternatives_do_not(many_scenes):
    for scene, pixels in many_scenes:
        for relation in synthetic.relation_options(scene.relation_set):
            expected = relation == scene.relation
            assert _holds(relation, pixels, scene) == expected, (
                f"scene {scene.index} ({scene.relation_set}): {scene.subject.name} {relation} "
                f"{scene.reference.name} should be {expected}"
            )


def test_every_object_is_visible_and_uniquely_named(many_scenes):
    for scene, pixels in many_scenes:
        names = [obj.name for obj in scene.objects]
        assert len(set(names)) == len(names)
        assert 2 <= len(scene.objects) <= 6
        for obj in scene.objects:
            assert _pixel_box(pixels, obj.colour)[0] is not None, f"scene {scene.index}: {obj.name} hidden"


def test_depth_scenes_never_ask_above_or_below(many_scenes):
    for scene, _ in many_scenes:
        if scene.relation_set == "depth":
            assert scene.relation in synthetic.DEPTH_SET
    assert {scene.relation_set for scene, _ in many_scenes} == {"vertical", "depth"}


def test_same_seed_gives_byte_identical_output_and_another_seed_differs(tmp_path):
    cfg = _config()
    prepare.run(prepare.Paths(out=tmp_path / "a"), cfg)
    prepare.run(prepare.Paths(out=tmp_path / "b"), cfg)
    prepare.run(prepare.Paths(out=tmp_path / "c"), cfg.model_copy(update={"seed": 1}))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()
    assert (tmp_path / "a/examples.jsonl").read_bytes() != (tmp_path / "c/examples.jsonl").read_bytes()


def test_24_scenes_prepare_as_256_px_pngs(tmp_path):
    summary = prepare.run(prepare.Paths(out=tmp_path / "out"), _config(num_scenes=24))
    assert summary["examples"] == 48 and summary["images"] == 24
    assert json.loads((tmp_path / "out/summary.json").read_text()) == summary
    examples = read_table(tmp_path / "out")
    with Image.open(tmp_path / "out" / examples[0].image_file) as image:
        assert image.size == (256, 256) and image.format == "PNG" and image.mode == "RGB"


def test_true_false_captions_are_balanced_per_relation(tmp_path):
    prepare.run(prepare.Paths(out=tmp_path / "out"), _config(num_scenes=24))
    per_gold = Counter()
    for e in read_table(tmp_path / "out"):
        if e.task == "true_false":
            assert e.options == ("yes", "no")
            per_gold[(e.source["gold_relation"], e.answer_index)] += 1
    assert per_gold == {(r, answer): 3 for r in synthetic.VERTICAL_SET for answer in (0, 1)}


def test_choice_task_has_four_captions_of_the_set_with_the_gold_marked(tmp_path):
    prepare.run(prepare.Paths(out=tmp_path / "out"), _config(num_scenes=24, relations=ALL_RELATIONS, max_objects=5))
    answer_positions = Counter()
    for e in read_table(tmp_path / "out"):
        if e.task != "multiple_choice":
            continue
        upstream = e.source["caption_options"]
        subject, reference = e.source["subject"], e.source["object"]
        relations = synthetic.relation_options(e.source["relation_set"])
        assert sorted(e.options) == sorted(upstream) and len(set(e.options)) == 4
        assert upstream[0] == synthetic.caption(subject, e.source["gold_relation"], reference)
        assert sorted(upstream) == sorted(synthetic.caption(subject, r, reference) for r in relations)
        assert e.answer == upstream[0] and e.relation == e.source["gold_relation"]
        assert 2 <= e.num_objects <= 5 and e.num_objects == len(e.source["objects"])
        answer_positions[e.answer_index] += 1
    assert len(answer_positions) >= 3  # the display order is shuffled, not gold-first


def test_false_caption_states_the_opposite_relation(tmp_path):
    prepare.run(prepare.Paths(out=tmp_path / "out"), _config(num_scenes=8))
    for e in read_table(tmp_path / "out"):
        if e.task == "true_false":
            gold = e.source["gold_relation"]
            stated = gold if e.answer_index == 0 else synthetic.OPPOSITE[gold]
            assert e.relation == stated
            assert e.caption == synthetic.caption(e.source["subject"], stated, e.source["object"])


def test_limit_keeps_whole_scenes_evenly_across_relations_and_drops_their_images(tmp_path):
    summary = prepare.run(prepare.Paths(out=tmp_path / "out"), _config(num_scenes=24).model_copy(update={"limit": 16}))
    examples = read_table(tmp_path / "out")
    assert len(examples) == 16 and summary["images"] == 8
    assert Counter(e.source["gold_relation"] for e in examples if e.task == "true_false") == {
        r: 2 for r in synthetic.VERTICAL_SET
    }
    assert len(list((tmp_path / "out/images").iterdir())) == 8


def test_too_many_objects_is_a_config_error():
    with pytest.raises(ZeroVLMError, match="max_objects"):
        parse_section("data", {"synthetic": {"max_objects": 9}})
