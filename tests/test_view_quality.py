"""View quality (zerovlm/views/quality.py): recorded by the views stage, the gate of "-gated" configurations,
and the quality bins of the score stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.views_fixtures import make_prepared, tiny_models, views_config  # noqa: F401  (pytest fixture)
from zerovlm.config import GateConfig, ScoreConfig, StitchConfig
from zerovlm.datasets.table import Example, write_table
from zerovlm.io import ZeroVLMError, write_json, write_jsonl
from zerovlm.pipeline import score, views
from zerovlm.pipeline import stitch as stitch_stage
from zerovlm.report.plots import quality_rows
from zerovlm.scoring.quality_bins import quality_bins
from zerovlm.store import ShardReader, ShardWriter
from zerovlm.view_configurations import CONFIGURATIONS
from zerovlm.views.checkpoints import load_components
from zerovlm.views.quality import pixel_sums, quality_records

OPENAI_CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_models):
    """Two runs of the views stage on the same images: (prepared folder, examples, first store, second store)."""
    root = tmp_path_factory.mktemp("quality")
    examples = make_prepared(root / "prepared", num_images=2, examples_per_image=1)
    cfg = views_config(tiny_models["kxic"])
    for name in ("a", "b"):
        views.run(views.Paths(prepared=root / "prepared", out=root / name), cfg)
    return root / "prepared", examples, root / "a", root / "b"


def _clip_embedding(encoder, rgb: np.ndarray) -> torch.Tensor:
    """The original's FrozenCLIPImageEmbedder on (H, W, 3) values in [0, 1]: bicubic to the encoder's size
    with align_corners (kornia), then OpenAI's mean and std."""
    x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None] * 2.0 - 1.0
    size = encoder.config.image_size
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    x = ((x + 1.0) / 2.0 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    with torch.no_grad():
        return encoder(x).image_embeds[0]


def test_every_view_has_its_quality_equal_to_an_independent_computation(stores, tiny_models):
    prepared, examples, store, _ = stores
    encoder = load_components(str(tiny_models["kxic"]), torch.float32, None, None).image_encoder
    reader = ShardReader(store)
    assert len(reader) == 8
    for key in reader.keys():
        quality = reader.metadata(key)["quality"]
        with Image.open(prepared / f"images/{reader.metadata(key)['image_id']}.png") as image:
            rgba = np.asarray(image.convert("RGBA").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float32)
        rgba /= 255.0
        original = rgba[:, :, :3] * rgba[:, :, 3:] + (1.0 - rgba[:, :, 3:])  # on white, as the sampler's input
        view = np.asarray(reader.image(key), dtype=np.float64)  # the stored uint8 pixels
        similarity = F.cosine_similarity(
            _clip_embedding(encoder, original), _clip_embedding(encoder, (view / 255.0).astype(np.float32)), dim=0
        )
        assert quality["clip_similarity"] == pytest.approx(float(similarity), abs=2e-6)
        assert quality["pixel_std"] == round(float(view.std()), 4)
        white = (view[:, :, 0] >= 250) & (view[:, :, 1] >= 250) & (view[:, :, 2] >= 250)
        assert quality["background_share"] == round(float(white.mean()), 6)
    reader.close()


@pytest.mark.parametrize("size", [1, 7, 256])
def test_pixel_statistics_equal_numpy_on_the_stored_pixels(size):
    """pixel_sums (on the views' device) and quality_records (on the host) with integer sums; NumPy's float64
    statistics of the same pixels are the reference, uniform and all-white views included (std exactly 0, share
    exactly 1)."""
    rng = np.random.default_rng(size)
    views = rng.integers(0, 256, size=(5, size, size, 3), dtype=np.uint8)
    views[1] = 255  # all white
    views[2] = 37  # uniform
    views[3, : size // 2] = (250, 251, 255)  # white enough in every channel, above a noisy half
    similarity = torch.tensor([0.1234567, -1.0, 1.0, 0.5, 0.0])
    sums = pixel_sums(torch.from_numpy(views), white_min_rgb=250)
    assert sums.dtype == torch.int64 and tuple(sums.shape) == (3, 5)
    qualities = quality_records(similarity.tolist(), sums.tolist(), size, size)
    for view, quality, expected_similarity in zip(views.astype(np.float64), qualities, similarity.tolist()):
        assert quality["clip_similarity"] == round(expected_similarity, 6)
        assert quality["pixel_std"] == round(float(view.std()), 4)  # as the index recorded it with NumPy
        assert quality["background_share"] == round(float((view >= 250).all(axis=-1).mean()), 6)
    assert qualities[1]["pixel_std"] == qualities[2]["pixel_std"] == 0.0 and qualities[1]["background_share"] == 1.0


def test_quality_is_reproducible(stores):
    _, _, first, second = stores
    assert sorted(first.glob("shard-*.jsonl")) and [p.read_bytes() for p in sorted(first.glob("shard-*.jsonl"))] == [
        p.read_bytes() for p in sorted(second.glob("shard-*.jsonl"))
    ]


GATE = GateConfig(min_clip_similarity=0.5, min_pixel_std=4.0, max_background_share=0.9)
# view quality -> whether the gate lets it through (thresholds themselves pass)
CASES = [
    ({"clip_similarity": 0.5, "pixel_std": 4.0, "background_share": 0.9}, True),
    ({"clip_similarity": 0.49, "pixel_std": 40.0, "background_share": 0.1}, False),  # drifted from its input
    ({"clip_similarity": 0.99, "pixel_std": 3.9, "background_share": 0.1}, False),  # near-uniform
    ({"clip_similarity": 0.99, "pixel_std": 40.0, "background_share": 0.91}, False),  # almost all background
]


def _view_store(folder, image_ids, qualities, colour=(9, 200, 30)):
    with ShardWriter(folder) as writer:
        for image_id, quality in zip(image_ids, qualities):
            metadata = {"image_id": image_id, "view": "left"}
            if quality is not None:
                metadata["quality"] = quality
            writer.add(f"{image_id}.left", Image.new("RGB", (16, 16), colour), metadata)


def test_a_gated_configuration_shows_the_view_or_the_original_per_the_gate(tmp_path):
    from zerovlm.config import DataConfig, SyntheticSource
    from zerovlm.datasets.table import read_table
    from zerovlm.io import load_rgb
    from zerovlm.pipeline import prepare

    prepare.run(prepare.Paths(out=tmp_path / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=4)))
    image_ids = sorted({e.image_id: e.image_file for e in read_table(tmp_path / "prepared")}.items())
    assert len(image_ids) == len(CASES)
    _view_store(tmp_path / "views", [i for i, _ in image_ids], [q for q, _ in CASES])
    cfg = StitchConfig(configurations=("origin", "left", "left-gated"), gate=GATE)
    stitch_stage.run(
        stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=tmp_path / "out"), cfg
    )
    store = ShardReader(tmp_path / "out")
    for (image_id, image_file), (_, passes) in zip(image_ids, CASES):
        gated = store.image(f"{image_id}.left-gated")
        expected = store.image(f"{image_id}.left") if passes else load_rgb(tmp_path / "prepared" / image_file, "o")
        assert gated.tobytes() == expected.tobytes()
        assert store.metadata(f"{image_id}.left-gated")["gate_passed"] is passes
    store.close()


def test_a_view_store_without_quality_is_refused_in_one_line(tmp_path):
    from zerovlm.config import DataConfig, SyntheticSource
    from zerovlm.datasets.table import read_table
    from zerovlm.pipeline import prepare

    prepare.run(prepare.Paths(out=tmp_path / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=1)))
    image_ids = sorted({e.image_id for e in read_table(tmp_path / "prepared")})
    _view_store(tmp_path / "views", image_ids, [None] * len(image_ids))
    paths = stitch_stage.Paths(prepared=tmp_path / "prepared", views=tmp_path / "views", out=tmp_path / "out")
    stitch_stage.run(paths, StitchConfig(configurations=("origin", "left")))  # no gate: quality not needed
    with pytest.raises(ZeroVLMError, match=r"no quality score .*`dvc repro -f views`") as error:
        stitch_stage.run(paths, StitchConfig(configurations=("origin", "left-gated")))
    assert "\n" not in str(error.value)


def test_gated_configurations_exist_for_single_views_only():
    assert {name for name in CONFIGURATIONS if name.endswith("-gated")} == {
        "left-gated",
        "right-gated",
        "random-gated",
        "top-gated",
    }
    assert CONFIGURATIONS["left-gated"] == ("left",)
    with pytest.raises(ValueError, match="origin-gated"):
        StitchConfig(configurations=("origin", "origin-gated"))


def _example(i):
    return Example(
        f"d/test/{i}", "d", "test", "true_false", f"{i:016d}", f"images/{i}.png", "c", ("yes", "no"), 0, "left of"
    )


def test_score_bins_accuracy_and_gain_by_view_quality(tmp_path):
    """8 examples, 4 quantile bins of 2; `all` takes the weakest of its views' quality."""
    examples = [_example(i) for i in range(8)]
    write_table(tmp_path / "prepared", examples)
    left = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.6]
    others = [0.95, 0.05, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]  # right and random: lower than left for example 1
    with ShardWriter(tmp_path / "views") as writer:
        for example, q_left, q_other in zip(examples, left, others):
            for view, q in (("left", q_left), ("right", q_other), ("random", 0.99)):
                quality = {"clip_similarity": q, "pixel_std": 50.0, "background_share": 0.5}
                writer.add(
                    f"{example.image_id}.{view}",
                    Image.new("RGB", (4, 4)),
                    {"image_id": example.image_id, "view": view, "quality": quality},
                )
    baseline = [True, False, True, False, True, False, True, False]
    treated = [True, True, True, True, False, False, True, True]
    predictions = []
    for configuration, mode, right in (
        ("origin", False, baseline),
        ("left", True, treated),
        ("all", True, treated),
    ):
        for example, ok in zip(examples, right):
            prompt = "with_view_prompt" if mode else "without_view_prompt"
            predictions.append(
                {
                    "record_id": f"{example.example_id}|{configuration}|{prompt}",
                    "example_id": example.example_id,
                    "configuration": configuration,
                    "with_view_prompt": mode,
                    "answers": ["Yes", "No"],
                    "option_logprobs": [-1.0, -2.0] if ok else [-2.0, -1.0],
                }
            )
    write_jsonl(tmp_path / "pred/predictions.jsonl", predictions)
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "loglik", "requests": len(predictions)})
    paths = _score_paths(tmp_path)
    score.run(paths, ScoreConfig(bootstrap_samples=0, quality_bins=4))
    bins = json.loads((tmp_path / "metrics/quality_bins.json").read_text())["true_false"]
    assert set(bins) == {"left", "all"}  # origin shows no view

    def expected(quality):  # sort by quality, 4 bins of 2 examples
        order = np.argsort(quality)
        rows = []
        for pair in order.reshape(4, 2):
            q = np.array(quality)[pair]
            acc, base = np.mean(np.array(treated)[pair]), np.mean(np.array(baseline)[pair])
            rows.append((q.min(), q.max(), q.mean(), 2, acc, base, round(acc - base, 4)))
        return rows

    def got(cell):
        keys = ("quality_min", "quality_max", "quality_mean", "n", "accuracy", "baseline_accuracy", "delta_vs_origin")
        return [tuple(b[k] for k in keys) for b in cell]

    np.testing.assert_allclose(got(bins["left"]["with_view_prompt"]), expected(left), atol=1e-6)
    weakest = [min(a, b) for a, b in zip(left, others)]
    np.testing.assert_allclose(got(bins["all"]["with_view_prompt"]), expected(weakest), atol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert {(r["configuration"], r["view_quality"]) for r in records if r["example_id"] == "d/test/1"} == {
        ("origin", None),
        ("left", 0.9),
        ("all", 0.05),
    }
    plot = quality_rows({("d", "m"): {"true_false": bins}}, ("all", "with_view_prompt"))["quality/d.m.true_false.json"]
    np.testing.assert_allclose(
        [(row["quality"], row["gain"]) for row in plot], [(r[2], r[6]) for r in expected(weakest)]
    )


def test_quality_bins_merge_tied_edges():
    verdicts = pd.DataFrame(
        {
            "task": "true_false",
            "configuration": ["origin"] * 4 + ["left"] * 4,
            "prompt_mode": ["without_view_prompt"] * 4 + ["with_view_prompt"] * 4,
            "example_id": list("abcd") * 2,
            "correct": [True, False, True, False, True, True, True, False],
            "view_quality": [None] * 4 + [0.5, 0.5, 0.5, 0.9],
        }
    )
    cell = quality_bins(verdicts, 4, ("origin", "without_view_prompt"))["true_false"]["left"]["with_view_prompt"]
    assert [b["n"] for b in cell] == [3, 1]


def test_export_views_writes_each_views_quality(stores, tmp_path):
    from zerovlm.sharing import export_views

    _, _, store, _ = stores
    export_views(store, tmp_path / "export")
    exported = [json.loads(line) for line in (tmp_path / "export/index.jsonl").read_text().splitlines()]
    reader = ShardReader(store)
    assert len(exported) == 8
    assert all(set(r["quality"]) == {"clip_similarity", "pixel_std", "background_share"} for r in exported)
    assert {r["key"]: r["quality"] for r in exported} == {k: reader.metadata(k)["quality"] for k in reader.keys()}
    reader.close()


def test_scoring_against_a_view_store_without_quality_is_refused_in_one_line(tmp_path):
    examples = [_example(0)]
    write_table(tmp_path / "prepared", examples)
    _view_store(tmp_path / "views", [examples[0].image_id], [None])
    write_jsonl(
        tmp_path / "pred/predictions.jsonl",
        [
            {
                "record_id": f"{examples[0].example_id}|origin|without_view_prompt",
                "example_id": examples[0].example_id,
                "configuration": "origin",
                "with_view_prompt": False,
                "answers": ["Yes", "No"],
                "option_logprobs": [-1.0, -2.0],
            }
        ],
    )
    write_json(tmp_path / "pred/summary.json", {"answer_mode": "loglik", "requests": 1})
    paths = _score_paths(tmp_path)
    with pytest.raises(ZeroVLMError, match=r"views: view '0{16}\.left' has no quality score") as error:
        score.run(paths, ScoreConfig(bootstrap_samples=0))
    assert "\n" not in str(error.value)


def _score_paths(tmp_path):
    """The score stage's paths over the folders these tests write under tmp_path."""
    return score.Paths(
        prepared=tmp_path / "prepared",
        predictions=tmp_path / "pred",
        metrics=tmp_path / "metrics",
        records=tmp_path / "records.jsonl",
        views=tmp_path / "views",
    )
