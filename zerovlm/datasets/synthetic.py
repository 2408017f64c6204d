"""Synthetic spatial scenes for the offline demo: seeded Pillow renderings with a known relation.

Each scene holds min_objects..max_objects simple 2.5D objects (cube, ball, cylinder, cone), every one a
different colour, so that a name such as "red cube" is unambiguous. Two of them (the subject and the
object) are placed so that exactly one relation of the scene's relation set holds:

- the "vertical" set (left of, right of, above, below; What'sUp subset A style) on a plain background:
  the pair is laid out along one axis, their boxes overlap on the other axis, so only one relation holds;
- the "depth" set (left of, right of, in front of, behind; What'sUp subset B style) on a ground plane
  seen in perspective: a nearer object stands lower in the picture, is larger and occludes the farther
  one, and the two overlap horizontally, so left/right are false. Above/below are never asked on a
  ground plane (they would be ambiguous with depth there), which is why the two sets are kept apart.

Every scene yields a VSR-style true/false example (balanced: the false caption uses the opposite
relation) and a What'sUp-style example with the four captions of the set (gold first upstream, shown in
a seeded shuffle). Same seed -> byte-identical PNGs and table (no clock, no global RNG).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

from zerovlm.config import SyntheticSource
from zerovlm.io import ZeroVLMError

VERTICAL_SET = ("left of", "right of", "above", "below")
DEPTH_SET = ("left of", "right of", "in front of", "behind")
OPPOSITE = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "in front of": "behind",
    "behind": "in front of",
}
SHAPES = ("cube", "ball", "cylinder", "cone")
COLOURS = {  # name -> base RGB; none is close to a background or shadow colour
    "red": (210, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 130, 20),
    "pink": (240, 110, 180),
    "cyan": (30, 190, 200),
}
PLAIN_BACKGROUND = (235, 235, 230)
SKY, GROUND, SHADOW = (205, 220, 235), (200, 185, 150), (150, 135, 105)
OUTLINE = (20, 20, 20)
HORIZON_FRACTION = 0.35  # ground scenes: the horizon line, as a fraction of the canvas height


def shades(colour: str) -> dict[str, tuple[int, int, int]]:
    """The fills an object of `colour` is drawn with (tests use them to find its pixels)."""
    r, g, b = COLOURS[colour]
    light = tuple(min(255, c + (255 - c) // 2) for c in (r, g, b))
    dark = tuple(c * 3 // 5 for c in (r, g, b))
    return {"base": (r, g, b), "light": light, "dark": dark}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive); y1 = where it stands

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    def to_record(self) -> dict:
        return {"name": self.name, "shape": self.shape, "colour": self.colour, "box": list(self.box)}


@dataclass(frozen=True)
class Scene:
    index: int
    relation_set: str  # "vertical" | "depth"
    objects: tuple[SceneObject, ...]  # in drawing order (far to near on the ground plane)
    subject: SceneObject
    reference: SceneObject  # the "object" of the relation
    relation: str  # what truly holds: subject <relation> reference


# ---------------------------------------------------------------- planning (which relation, which set)
def scene_plan(index: int, relations: tuple[str, ...]) -> tuple[str, str, bool]:
    """(gold relation, relation set, caption is true) for scene `index`, balanced by construction.

    Relations cycle round-robin; within each relation true and false captions alternate per cycle.
    """
    relation = relations[index % len(relations)]
    cycle = index // len(relations)
    caption_true = cycle % 2 == 0
    if relation in ("above", "below"):
        return relation, "vertical", caption_true
    if relation in ("in front of", "behind"):
        return relation, "depth", caption_true
    has_vertical = any(r in ("above", "below") for r in relations)
    has_depth = any(r in ("in front of", "behind") for r in relations)
    if has_depth and not has_vertical:
        return relation, "depth", caption_true
    if has_depth and has_vertical:  # left/right scenes alternate between the two kinds of scene
        return relation, ("vertical", "depth")[cycle % 2], caption_true
    return relation, "vertical", caption_true


def relation_options(relation_set: str) -> tuple[str, ...]:
    return VERTICAL_SET if relation_set == "vertical" else DEPTH_SET


# ---------------------------------------------------------------- layout
def _overlaps(a: tuple[int, ...], b: tuple[int, ...], margin: int) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _box(cx: float, bottom: float, size: float) -> tuple[int, int, int, int]:
    half = size / 2
    return (round(cx - half), round(bottom - size), round(cx + half), round(bottom))


def _depth_bottom(depth: float, size_px: int) -> float:
    """Ground scenes: depth 0 (far) stands just below the horizon, depth 1 (near) at the bottom."""
    horizon = HORIZON_FRACTION * size_px
    return horizon + 0.1 * size_px + depth * (0.9 * size_px - horizon - 0.1 * size_px)


def _depth_size(depth: float, base: float) -> float:
    return base * (0.6 + 0.6 * depth)  # perspective: nearer objects are drawn larger


def _pair_vertical(rng: random.Random, relation: str, s: int, base: float):
    size_a, size_b = rng.uniform(0.8, 1.2) * base, rng.uniform(0.8, 1.2) * base
    gap = rng.uniform(0.05, 0.2) * s
    minor_offset = rng.uniform(-0.15, 0.15) * min(size_a, size_b)  # keeps the other axis overlapping
    sign = -1 if relation in ("left of", "above") else 1  # subject before (left/up) or after the reference
    major = sign * ((size_a + size_b) / 2 + gap)
    if relation in ("left of", "right of"):
        dx, dy = major, minor_offset
    else:
        dx, dy = minor_offset, major
    # Pick the reference centre so that both boxes fit in the canvas (margin 2 px).
    lo_x = max(size_b / 2, size_a / 2 - dx) + 2
    hi_x = min(s - size_b / 2, s - size_a / 2 - dx) - 2
    lo_y = max(size_b / 2, size_a / 2 - dy) + 2
    hi_y = min(s - size_b / 2, s - size_a / 2 - dy) - 2
    if lo_x >= hi_x or lo_y >= hi_y:
        return None
    cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    return _box(cx + dx, cy + dy + size_a / 2, size_a), _box(cx, cy + size_b / 2, size_b)


def _pair_depth(rng: random.Random, relation: str, s: int, base: float):
    if relation in ("left of", "right of"):
        depth = rng.uniform(0.1, 0.9)
        depth_a = depth_b = depth  # side by side on one depth line: neither is in front
        size_a, size_b = _depth_size(depth_a, base), _depth_size(depth_b, base)
        sign = -1 if relation == "left of" else 1
        dx = sign * ((size_a + size_b) / 2 + rng.uniform(0.05, 0.2) * s)
        bottom_a, bottom_b = _depth_bottom(depth_a, s), _depth_bottom(depth_b, s)
    else:
        near, far = ("a", "b") if relation == "in front of" else ("b", "a")
        depth_near = rng.uniform(0.45, 1.0)
        size_near = _depth_size(depth_near, base)
        # The far one stands 45-70 % of the near one's height higher: the near one occludes its base
        # and at least about a third of the far one stays visible above it.
        bottom_near = _depth_bottom(depth_near, s)
        bottom_far = bottom_near - rng.uniform(0.45, 0.7) * size_near
        horizon = HORIZON_FRACTION * s
        depth_far = (bottom_far - horizon - 0.1 * s) / (0.9 * s - horizon - 0.1 * s)
        size_far = _depth_size(depth_far, base)
        depths = {near: (bottom_near, size_near), far: (bottom_far, size_far)}
        (bottom_a, size_a), (bottom_b, size_b) = depths["a"], depths["b"]
        dx = rng.uniform(-0.25, 0.25) * min(size_a, size_b)  # strong horizontal overlap
    lo = max(size_b / 2, size_a / 2 - dx) + 2
    hi = min(s - size_b / 2, s - size_a / 2 - dx) - 2
    if lo >= hi:
        return None
    cx = rng.uniform(lo, hi)
    return _box(cx + dx, bottom_a, size_a), _box(cx, bottom_b, size_b)


def _distractor_box(rng: random.Random, relation_set: str, s: int, base: float):
    if relation_set == "depth":
        depth = rng.uniform(0.0, 1.0)
        size = _depth_size(depth, base)
        return _box(rng.uniform(size / 2, s - size / 2), _depth_bottom(depth, s), size)
    size = rng.uniform(0.8, 1.2) * base
    return _box(rng.uniform(size / 2, s - size / 2), rng.uniform(size, s), size)


def _try_layout(
    rng: random.Random, index: int, relation: str, relation_set: str, num_objects: int, s: int
) -> Scene | None:
    base = s * (0.18 if num_objects <= 4 else 0.13)  # smaller objects when the scene is crowded
    pair = (_pair_vertical if relation_set == "vertical" else _pair_depth)(rng, relation, s, base)
    if pair is None:
        return None
    boxes = list(pair)
    for _ in range(num_objects - 2):
        for _attempt in range(100):
            candidate = _distractor_box(rng, relation_set, s, base)
            if not any(_overlaps(candidate, other, margin=round(0.03 * s)) for other in boxes):
                boxes.append(candidate)
                break
        else:
            return None
    colours = rng.sample(sorted(COLOURS), num_objects)
    objects = [SceneObject(rng.choice(SHAPES), colour, box) for colour, box in zip(colours, boxes)]
    subject, reference = objects[0], objects[1]
    # Far to near (higher base first) so that nearer objects occlude farther ones; stable for ties.
    drawing_order = sorted(objects, key=lambda o: o.box[3]) if relation_set == "depth" else objects
    return Scene(index, relation_set, tuple(drawing_order), subject, reference, relation)


def make_scene(cfg: SyntheticSource, seed: int, index: int) -> Scene:
    """Lay out scene `index`; deterministic in (cfg, seed, index)."""
    if cfg.max_objects > len(COLOURS):
        raise ZeroVLMError(
            f"data.synthetic.max_objects={cfg.max_objects}: at most {len(COLOURS)} "
            f"(one colour per object keeps names unambiguous)"
        )
    rng = random.Random(f"zerovlm-synthetic:{seed}:{index}")
    relation, relation_set, _ = scene_plan(index, tuple(cfg.relations))
    num_objects = rng.randint(cfg.min_objects, cfg.max_objects)
    for _attempt in range(200):
        scene = _try_layout(rng, index, relation, relation_set, num_objects, cfg.image_size_px)
        if scene is not None:
            return scene
    raise ZeroVLMError(
        f"synthetic scene {index}: could not place {num_objects} objects on a "
        f"{cfg.image_size_px} px canvas; lower data.synthetic.max_objects or raise image_size_px"
    )


# ---------------------------------------------------------------- drawing
def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.box
    w, h = x1 - x0, y1 - y0
    fill = shades(obj.colour)
    if obj.shape == "cube":  # front face, lit top face and shaded side face
        d = w // 4
        draw.polygon(
            [(x0 + d, y0), (x1 - 1, y0), (x1 - 1 - d, y0 + d), (x0, y0 + d)], fill=fill["light"], outline=OUTLINE
        )
        draw.polygon(
            [(x1 - 1 - d, y0 + d), (x1 - 1, y0), (x1 - 1, y1 - 1 - d), (x1 - 1 - d, y1 - 1)],
            fill=fill["dark"],
            outline=OUTLINE,
        )
        draw.rectangle([x0, y0 + d, x1 - 1 - d, y1 - 1], fill=fill["base"], outline=OUTLINE)
    elif obj.shape == "ball":  # disc with a highlight up-left
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill["base"], outline=OUTLINE)
        draw.ellipse([x0 + w // 5, y0 + h // 5, x0 + w // 2, y0 + h // 2], fill=fill["light"])
    elif obj.shape == "cylinder":  # body, dark bottom rim, lit top ellipse
        e = max(2, h // 5)
        draw.ellipse([x0, y1 - 1 - e, x1 - 1, y1 - 1], fill=fill["dark"], outline=OUTLINE)
        draw.rectangle([x0, y0 + e // 2, x1 - 1, y1 - 1 - e // 2], fill=fill["base"])
        draw.line([(x0, y0 + e // 2), (x0, y1 - 1 - e // 2)], fill=OUTLINE)
        draw.line([(x1 - 1, y0 + e // 2), (x1 - 1, y1 - 1 - e // 2)], fill=OUTLINE)
        draw.ellipse([x0, y0, x1 - 1, y0 + e], fill=fill["light"], outline=OUTLINE)
    else:  # cone: lit left half, shaded right half
        apex = (x0 + w // 2, y0)
        draw.polygon([apex, (x0, y1 - 1), (x0 + w // 2, y1 - 1)], fill=fill["base"], outline=OUTLINE)
        draw.polygon([apex, (x0 + w // 2, y1 - 1), (x1 - 1, y1 - 1)], fill=fill["dark"], outline=OUTLINE)


def render_scene(scene: Scene, size_px: int) -> Image.Image:
    image = Image.new("RGB", (size_px, size_px), PLAIN_BACKGROUND)
    draw = ImageDraw.Draw(image)
    if scene.relation_set == "depth":
        horizon = round(HORIZON_FRACTION * size_px)
        draw.rectangle([0, 0, size_px - 1, horizon - 1], fill=SKY)
        draw.rectangle([0, horizon, size_px - 1, size_px - 1], fill=GROUND)
        for obj in scene.objects:  # contact shadows first, so that no shadow covers an object
            x0, _, x1, y1 = obj.box
            draw.ellipse([x0 - 2, y1 - 4, x1 + 1, y1 + 2], fill=SHADOW)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


def scenes(cfg: SyntheticSource, seed: int) -> Iterator[tuple[Scene, Image.Image]]:
    for index in range(cfg.num_scenes):
        scene = make_scene(cfg, seed, index)
        yield scene, render_scene(scene, cfg.image_size_px)


# ---------------------------------------------------------------- captions and tasks
def caption(subject: str, relation: str, reference: str) -> str:
    return f"The {subject} is {relation} the {reference}."


def true_false_task(scene: Scene, relations: tuple[str, ...]) -> tuple[str, bool, str]:
    """(caption, is true, the caption's relation); a false caption states the opposite relation."""
    _, _, caption_true = scene_plan(scene.index, relations)
    stated = scene.relation if caption_true else OPPOSITE[scene.relation]
    return caption(scene.subject.name, stated, scene.reference.name), caption_true, stated


def choice_task(scene: Scene, seed: int) -> tuple[list[str], list[str], int]:
    """(upstream options with the gold first, displayed options, index of the gold in the display)."""
    others = [r for r in relation_options(scene.relation_set) if r != scene.relation]
    upstream = [caption(scene.subject.name, r, scene.reference.name) for r in [scene.relation, *others]]
    order = list(range(len(upstream)))
    random.Random(f"zerovlm-options:{seed}:{scene.index}").shuffle(order)
    displayed = [upstream[i] for i in order]
    return upstream, displayed, order.index(0)
