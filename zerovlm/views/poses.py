"""Camera poses of the requested views and Zero123's relative-pose conditioning vector.

A view is a camera *delta* from the input view, in the units of the official demo (gradio_new.py):
polar and azimuth in degrees (positive polar moves the camera down; polar = 90 - elevation), radius in
scene units. The presets are the demo's (left, right, top) plus its "random" view, which is drawn per
(seed, image, view name) so that a re-run, or the same image met in another dataset, gets the same view.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from zerovlm.io import ZeroVLMError

if TYPE_CHECKING:
    import torch

# The names and ranges below are the only statement of them: config.py's schema imports them (so this module
# loads torch only in pose_vector: validating params needs no torch).
POSE_VARIANTS = ("zero123", "stable_zero123")
# Allowed deltas (radius: the demo slider's range).
POLAR_RANGE_DEG = (-180.0, 180.0)
AZIMUTH_RANGE_DEG = (-360.0, 360.0)
RADIUS_RANGE = (-0.5, 0.5)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]{0,39}$")  # part of a store key: no '.'


@dataclass(frozen=True)
class ViewPose:
    name: str  # the view's name, e.g. "left"; part of the store key "<image_id>.<name>"
    polar_deg: float  # polar delta in degrees; positive moves the camera down
    azimuth_deg: float  # azimuth delta in degrees; positive turns right
    radius: float = 0.0  # distance delta in scene units

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME_PATTERN.match(self.name):
            raise ZeroVLMError(
                f"view name {self.name!r}: use 1-40 letters, digits, '_', '+', '-' (it becomes part of a file key)"
            )
        for field, value, (low, high) in (
            ("polar_deg", self.polar_deg, POLAR_RANGE_DEG),
            ("azimuth_deg", self.azimuth_deg, AZIMUTH_RANGE_DEG),
            ("radius", self.radius, RADIUS_RANGE),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ZeroVLMError(f"view {self.name!r}: {field} must be a finite number, got {value!r}")
            if not low <= value <= high:
                raise ZeroVLMError(f"view {self.name!r}: {field}={value} outside [{low}, {high}]")


# The official demo's named views (gradio_new.py); RANDOM_PRESET is drawn by random_pose().
PRESETS: dict[str, ViewPose] = {
    pose.name: pose
    for pose in (
        ViewPose("left", 0.0, -90.0, 0.0),
        ViewPose("right", 0.0, 90.0, 0.0),
        ViewPose("top", -90.0, 0.0, 0.0),  # "view from above": the camera moves up by 90 degrees
    )
}
RANDOM_PRESET = "random"
VIEW_PRESETS = (*PRESETS, RANDOM_PRESET)  # the names views.presets accepts


def _rng(seed: int, image_id: str, view_name: str) -> np.random.Generator:
    # A hash of the three keys, not Python's hash() (salted per process) nor a shared global RNG.
    digest = hashlib.sha256(f"{seed}\x00{image_id}\x00{view_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def random_pose(seed: int, image_id: str, name: str = RANDOM_PRESET) -> ViewPose:
    """The demo's random view: polar = round(degrees(arcsin(U(-1, 1))) * 160/180), azimuth = round(U(-150, 150)).

    The arcsin makes the polar delta denser near the horizon, as in the demo; 160/180 keeps it in [-80, 80].
    """
    rng = _rng(seed, image_id, name)
    polar = int(np.round(np.arcsin(rng.uniform(-1.0, 1.0)) * 160.0 / np.pi))
    azimuth = int(np.round(rng.uniform(-150.0, 150.0)))
    return ViewPose(name, float(polar), float(azimuth), 0.0)


def resolve_views(cfg, image_id: str) -> list[ViewPose]:
    """The poses of one image: `cfg.presets` in their order, then `cfg.custom` (cfg: config.ViewsConfig)."""
    views = []
    for preset in cfg.presets:
        if preset == RANDOM_PRESET:
            views.append(random_pose(cfg.seed, image_id))
        elif preset in PRESETS:
            views.append(PRESETS[preset])
        else:
            raise ZeroVLMError(f"views.presets: unknown preset {preset!r}; valid: {list(VIEW_PRESETS)}")
    for custom in cfg.custom:
        views.append(ViewPose(custom.name, float(custom.polar_deg), float(custom.azimuth_deg), float(custom.radius)))
    names = [view.name for view in views]
    if len(set(names)) != len(names):
        raise ZeroVLMError(f"views: view names must be unique, got {names}")
    return views


def pose_vector(pose: ViewPose, variant: str = "zero123", cond_polar_deg: float = 90.0) -> torch.Tensor:
    """Zero123's camera conditioning, shape (4,), float32.

    zero123:        [radians(d_polar), sin(radians(d_azimuth)), cos(radians(d_azimuth)), d_radius]
    stable_zero123: the 4th element is the conditioning view's absolute polar angle in radians
                    (90 degrees: the input is assumed level).
    """
    import torch

    if variant not in POSE_VARIANTS:
        raise ZeroVLMError(f"pose variant {variant!r}: valid: {POSE_VARIANTS}")
    if not isinstance(pose, ViewPose):
        raise ZeroVLMError(f"pose must be a ViewPose, got {type(pose).__name__}")
    if not math.isfinite(cond_polar_deg) or not 0.0 <= cond_polar_deg <= 180.0:
        raise ZeroVLMError(f"cond_polar_deg must be in [0, 180], got {cond_polar_deg!r}")
    azimuth = math.radians(pose.azimuth_deg)
    last = pose.radius if variant == "zero123" else math.radians(cond_polar_deg)
    return torch.tensor([math.radians(pose.polar_deg), math.sin(azimuth), math.cos(azimuth), last], dtype=torch.float32)
