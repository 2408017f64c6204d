"""The infer stage on the tiny LLaVA: planning, deduplication, resume after interruption."""

import json

import pytest
from PIL import Image

import zerovlm.inference as inference
from zerovlm.compose import stitch_stage
from zerovlm.config import DataConfig, InferConfig, StitchConfig, SyntheticSource
from zerovlm.datasets.prepare import prepare_dataset
from zerovlm.datasets.table import read_table
from zerovlm.store import ShardWriter
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava

CONFIGURATIONS = ("origin", "left", "origin+left")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared synthetic scenes, a stand-in view store, the stitched store and a tiny LLaVA."""
    root = tmp_path_factory.mktemp("infer")
    prepare_dataset(DataConfig(synthetic=SyntheticSource(num_scenes=3)), root / "prepared")
    with ShardWriter(root / "views") as views:  # the views' pixels do not matter to this stage
        for image_id in sorted({e.image_id for e in read_table(root / "prepared")}):
            views.add(f"{image_id}.left", Image.new("RGB", (32, 32), (200, 30, 30)))
    stitch_stage(StitchConfig(configurations=CONFIGURATIONS, panel_size_px=32, gap_px=2),
                 root / "prepared", root / "views", root / "stitched")
    build_tiny_llava(root / "llava", seed=0)
    return root


class CountingBackend:
    """The real backend, counting requests and optionally failing after some calls (an interruption)."""

    def __init__(self, cfg, fail_after_calls=None):
        self.model, self.requests, self.calls, self.fail_after_calls = load_backend(cfg), 0, 0, fail_after_calls

    def option_logprobs(self, requests):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.requests += len(requests)
        return self.model.option_logprobs(requests)

    def render_prompt(self, request):
        return self.model.render_prompt(request)


def _cfg(workspace, **overrides):
    return InferConfig(model=str(workspace / "llava"), dtype="float32", device="cpu", **overrides)


def _run(workspace, cfg, out_name, monkeypatch, backend):
    monkeypatch.setattr(inference, "load_backend", lambda _: backend)
    return inference.infer_stage(cfg, workspace / "prepared", workspace / "stitched", workspace / out_name)


def test_every_job_gets_a_record_and_the_baseline_is_computed_once(workspace, monkeypatch):
    cfg = _cfg(workspace)
    backend = CountingBackend(cfg)
    summary = _run(workspace, cfg, "predictions", monkeypatch, backend)
    records = [json.loads(line) for line in (workspace / "predictions/predictions.jsonl").open()]
    examples = read_table(workspace / "prepared")
    assert summary["requests"] == len(records) == len(examples) * len(CONFIGURATIONS) * 2
    # origin has no view prompt, so its two prompt modes are one request: computed once
    assert backend.requests == len(records) - len(examples)
    by_id = {r["record_id"]: r for r in records}
    for example in examples:
        with_vp = by_id[f"{example.example_id}|origin|with_view_prompt"]
        without = by_id[f"{example.example_id}|origin|without_view_prompt"]
        assert with_vp["option_logprobs"] == without["option_logprobs"]
        left = by_id[f"{example.example_id}|left|with_view_prompt"]["rendered_prompt"]
        assert "This is a 3D single-view image generated from the original image." in left
    assert all(len(r["option_logprobs"]) == len(r["answers"]) for r in records)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(workspace, monkeypatch):
    monkeypatch.setattr(inference, "CHUNK_REQUESTS", 8)
    cfg = _cfg(workspace)
    complete = CountingBackend(cfg)
    _run(workspace, cfg, "reference", monkeypatch, complete)

    with pytest.raises(KeyboardInterrupt):
        _run(workspace, cfg, "resumed", monkeypatch, CountingBackend(cfg, fail_after_calls=2))
    assert not (workspace / "resumed").exists(), "an interrupted stage must not leave a finished-looking output"
    partial = workspace / ".resumed.partial/part-000-of-001.jsonl"
    finished = 2 * len(CONFIGURATIONS) * 2  # two chunks of one example: configurations x prompt modes
    assert len(partial.read_text().splitlines()) == finished
    with partial.open("a") as f:  # the interruption cut a line in half
        f.write('{"record_id": "cut')

    resumed = CountingBackend(cfg)
    summary = _run(workspace, cfg, "resumed", monkeypatch, resumed)
    assert summary["resumed"] == finished and resumed.requests < complete.requests
    reference = (workspace / "reference/predictions.jsonl").read_text()
    assert (workspace / "resumed/predictions.jsonl").read_text() == reference
    assert not partial.parent.exists()


def test_a_partial_run_with_other_settings_is_not_reused(workspace, monkeypatch):
    monkeypatch.setattr(inference, "CHUNK_REQUESTS", 8)
    with pytest.raises(KeyboardInterrupt):
        _run(workspace, _cfg(workspace), "changed", monkeypatch,
             CountingBackend(_cfg(workspace), fail_after_calls=1))
    other = _cfg(workspace, question_template="true_false")
    summary = _run(workspace, other, "changed", monkeypatch, CountingBackend(other))
    assert summary["resumed"] == 0
