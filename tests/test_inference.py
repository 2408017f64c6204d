"""The infer stage on the tiny LLaVA: planning, deduplication, resume after interruption."""

import json

import pytest
from PIL import Image

from zerovlm import answering
from zerovlm.config import DataConfig, InferConfig, ScoreConfig, StitchConfig, SyntheticSource
from zerovlm.datasets.table import read_table
from zerovlm.io import load_rgb, sha256_file
from zerovlm.pipeline import infer, prepare, score, stitch
from zerovlm.report import table
from zerovlm.store import ShardWriter
from zerovlm.vlm.base import image_fingerprint
from zerovlm.vlm.registry import load_backend
from zerovlm.vlm.tiny import build_tiny_llava

CONFIGURATIONS = ("origin", "left", "origin+left")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Prepared synthetic scenes, a stand-in view store, the stitched store and a tiny LLaVA."""
    root = tmp_path_factory.mktemp("infer")
    prepare.run(prepare.Paths(out=root / "prepared"), DataConfig(synthetic=SyntheticSource(num_scenes=3)))
    with ShardWriter(root / "views") as views:  # the views' pixels do not matter to this stage
        for image_id in sorted({e.image_id for e in read_table(root / "prepared")}):
            views.add(f"{image_id}.left", Image.new("RGB", (32, 32), (200, 30, 30)))
    stitch.run(
        stitch.Paths(prepared=root / "prepared", views=root / "views", out=root / "stitched"),
        StitchConfig(configurations=CONFIGURATIONS, panel_size_px=32, gap_px=2),
    )
    build_tiny_llava(root / "llava", seed=0)
    return root


class CountingBackend:
    """The real backend, counting requests and optionally failing after some calls (an interruption)."""

    def __init__(self, cfg, fail_after_calls=None):
        self.model, self.requests, self.calls, self.fail_after_calls = load_backend(cfg), 0, 0, fail_after_calls
        self.max_images_per_request, self.seen = self.model.max_images_per_request, []

    def option_logprobs(self, requests):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.requests += len(requests)
        self.seen += requests
        return self.model.option_logprobs(requests)

    def __getattr__(self, name):  # render_prompt, info: the real backend's
        return getattr(self.model, name)


def _cfg(workspace, **overrides):
    return InferConfig(model=str(workspace / "llava"), dtype="float32", device="cpu", **overrides)


def _run(workspace, cfg, out_name, monkeypatch, backend):
    monkeypatch.setattr(infer, "load_backend", lambda *_: backend)
    return infer.run(
        infer.Paths(prepared=workspace / "prepared", stitched=workspace / "stitched", out=workspace / out_name), cfg
    )


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


def test_the_baseline_is_asked_even_with_the_view_prompt_only(workspace):
    examples = read_table(workspace / "prepared")
    jobs = answering.plan_answer_jobs(_cfg(workspace, view_prompt=(True,)), examples, list(CONFIGURATIONS), "grid")
    asked = {(job.configuration, job.with_view_prompt) for job in jobs}
    assert asked == {(c, True) for c in CONFIGURATIONS} | {("origin", False)}
    assert len(jobs) == len(examples) * (len(CONFIGURATIONS) + 1)


def test_a_chunk_decodes_each_image_once_and_its_requests_share_it(workspace):
    """Every request showing a stored image gets the same object (backends key their work by image), and each
    key is decoded once per chunk however many jobs ask for it."""
    examples = read_table(workspace / "prepared")
    jobs = answering.plan_answer_jobs(_cfg(workspace), examples, list(CONFIGURATIONS), "grid")
    decoded = []

    def image(key):
        decoded.append(key)
        return Image.new("RGB", (4, 4), (len(decoded), 0, 0))

    chunk = answering.chunk_requests(jobs, image)
    keys = [k for job in jobs for k in job.image_keys]
    assert sorted(decoded) == sorted(set(keys)) and len(keys) > len(decoded)
    shown: dict[str, set[int]] = {}
    for job, index in zip(chunk.jobs, chunk.index):
        for key, picture in zip(job.image_keys, chunk.requests[index].images, strict=True):
            shown.setdefault(key, set()).add(id(picture))
    assert all(len(objects) == 1 for objects in shown.values())
    # each request carries its images' fingerprints, computed here (in the stage's loader thread)
    for request in chunk.requests:
        assert request.image_fingerprints == tuple(image_fingerprint(picture) for picture in request.images)
    assert len({k for r in chunk.requests for k in r.image_fingerprints}) == len(decoded)


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(workspace, monkeypatch):
    monkeypatch.setattr(answering, "CHUNK_JOBS", 8)
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
    monkeypatch.setattr(answering, "CHUNK_JOBS", 8)
    with pytest.raises(KeyboardInterrupt):
        _run(workspace, _cfg(workspace), "changed", monkeypatch, CountingBackend(_cfg(workspace), fail_after_calls=1))
    other = _cfg(workspace, question_template="true_false")
    summary = _run(workspace, other, "changed", monkeypatch, CountingBackend(other))
    assert summary["resumed"] == 0


def test_a_partial_run_from_other_backend_code_is_not_reused(workspace, monkeypatch):
    monkeypatch.setattr(answering, "CHUNK_JOBS", 8)
    with pytest.raises(KeyboardInterrupt):
        _run(workspace, _cfg(workspace), "recoded", monkeypatch, CountingBackend(_cfg(workspace), fail_after_calls=1))
    before = infer.backend_code_identity()
    monkeypatch.setattr(infer, "backend_code_identity", lambda: before + " after an edit")
    summary = _run(workspace, _cfg(workspace), "recoded", monkeypatch, CountingBackend(_cfg(workspace)))
    assert summary["resumed"] == 0


@pytest.mark.parametrize("change", ["stitched pixels", "model weights"])
def test_a_partial_run_on_other_images_or_weights_is_not_reused(workspace, tmp_path, monkeypatch, change):
    monkeypatch.setattr(answering, "CHUNK_JOBS", 8)
    model, stitched = tmp_path / "llava", workspace / "stitched"
    build_tiny_llava(model, seed=0)
    cfg = InferConfig(model=str(model), dtype="float32", device="cpu")
    monkeypatch.setattr(infer, "load_backend", lambda *_: CountingBackend(cfg, fail_after_calls=1))
    with pytest.raises(KeyboardInterrupt):
        infer.run(infer.Paths(prepared=workspace / "prepared", stitched=stitched, out=tmp_path / "answers"), cfg)
    if change == "stitched pixels":  # other views, same keys and sizes: the shard indexes are identical
        with ShardWriter(tmp_path / "views") as views:
            for image_id in sorted({e.image_id for e in read_table(workspace / "prepared")}):
                views.add(f"{image_id}.left", Image.new("RGB", (32, 32), (30, 30, 200)))
        stitched = tmp_path / "stitched"
        stitch.run(
            stitch.Paths(prepared=workspace / "prepared", views=tmp_path / "views", out=stitched),
            StitchConfig(configurations=CONFIGURATIONS, panel_size_px=32, gap_px=2),
        )
        assert all(
            (stitched / p.name).read_bytes() == p.read_bytes() for p in (workspace / "stitched").glob("shard-*.jsonl")
        )
    else:  # the folder rebuilt in place with other weights
        build_tiny_llava(model, seed=1)
    monkeypatch.setattr(infer, "load_backend", lambda *_: CountingBackend(cfg))
    summary = infer.run(infer.Paths(prepared=workspace / "prepared", stitched=stitched, out=tmp_path / "answers"), cfg)
    assert summary["resumed"] == 0


SEPARATE = ("origin", "origin+left-separate")


def _separate_store(workspace):
    """The stitched store of a configuration sent as two separate images (origin, then left)."""
    if not (workspace / "stitched_separate").exists():
        stitch.run(
            stitch.Paths(
                prepared=workspace / "prepared", views=workspace / "views", out=workspace / "stitched_separate"
            ),
            StitchConfig(configurations=SEPARATE, panel_size_px=32, gap_px=2),
        )
    return workspace / "stitched_separate"


def test_a_one_image_model_is_not_given_separate_images(workspace, monkeypatch, caplog):
    cfg = _cfg(workspace)  # LLaVA-1.5: one image per request
    backend = CountingBackend(cfg)
    monkeypatch.setattr(infer, "load_backend", lambda *_: backend)
    with caplog.at_level("WARNING", logger="zerovlm.pipeline.infer"):
        summary = infer.run(
            infer.Paths(prepared=workspace / "prepared", stitched=_separate_store(workspace), out=workspace / "one"),
            cfg,
        )
    reason = "backend llava takes at most 1 image(s) per request; this configuration sends 2"
    assert summary["not_evaluated"] == {"origin+left-separate": reason}
    assert "configuration origin+left-separate not evaluated" in caplog.text
    examples = read_table(workspace / "prepared")
    assert summary["requests_not_evaluated"] == len(examples) * 2 and summary["requests"] == len(examples) * 2
    assert all(len(r.images) == 1 for r in backend.seen)
    records = [json.loads(line) for line in (workspace / "one/predictions.jsonl").open()]
    assert {r["configuration"] for r in records} == {"origin"}

    # score and the report show it as not evaluated, never as 0% accuracy
    scored = score.run(
        score.Paths(
            prepared=workspace / "prepared",
            predictions=workspace / "one",
            metrics=workspace / "one_metrics",
            records=workspace / "one_records.jsonl",
        ),
        ScoreConfig(bootstrap_samples=0),
    )
    assert scored["not_evaluated"] == {"origin+left-separate": reason}
    assert scored["counts"]["n_requests_not_evaluated"] == len(examples) * 2
    assert all("origin+left-separate" not in scored[task] for task in ("true_false", "multiple_choice"))
    text = table.markdown({("synthetic", "tiny"): scored}, ["synthetic"], ["tiny"], list(SEPARATE), ScoreConfig())
    assert "| ZeroVLM (tiny) | origin+left-separate | - | n/e | n/e |" in text and "n/e: not evaluated" in text
    csv_text = table.to_csv({("synthetic", "tiny"): scored}, ["synthetic"], ["tiny"], list(SEPARATE), 0.05)
    assert reason in csv_text


def test_a_multi_image_model_gets_the_panels_in_order(workspace, monkeypatch):
    cfg = _cfg(workspace, backend="hf_auto")
    backend = CountingBackend(cfg)
    backend.max_images_per_request = 4  # stands in for a native multi-image model (Qwen2-VL, Idefics3, ...)
    monkeypatch.setattr(infer, "load_backend", lambda *_: backend)
    summary = infer.run(
        infer.Paths(prepared=workspace / "prepared", stitched=_separate_store(workspace), out=workspace / "several"),
        cfg,
    )
    assert summary["not_evaluated"] == {} and summary["requests_not_evaluated"] == 0
    example = read_table(workspace / "prepared")[0]
    origin = load_rgb(workspace / "prepared" / example.image_file, "original")
    sent = [r for r in backend.seen if len(r.images) == 2]
    assert len(sent) == len(read_table(workspace / "prepared")) * 2  # every example, with and without prompt
    for request in sent:
        assert request.images[1].getpixel((0, 0)) == (200, 30, 30)  # the left view comes second
    first = next(r for r in sent if r.images[0].tobytes() == origin.tobytes())  # the original comes first
    records = {r["record_id"]: r for r in map(json.loads, (workspace / "several/predictions.jsonl").open())}
    shown = records[f"{example.example_id}|origin+left-separate|with_view_prompt"]["rendered_prompt"]
    assert shown.startswith(
        "USER: <image>\n<image>\nThe original image first, and the left view image second. "
        "Based on these two images. Judging by these two pictures, "
    )
    assert first.images[0].size == origin.size  # sent unchanged, not squashed to a panel


def test_answers_folder_is_identical_on_a_rerun_and_timings_go_to_the_run_record(workspace):
    """summary.json holds only what the answers determine, so re-running infer leaves score cached."""
    cfg = _cfg(workspace, view_prompt=(True,))
    folders = []
    for name in ("first", "second"):
        record = workspace / f"{name}_run.json"
        result = infer.run(
            infer.Paths(
                prepared=workspace / "prepared",
                stitched=workspace / "stitched",
                out=workspace / name,
                run_record=record,
            ),
            cfg,
        )
        folders.append({p.name: sha256_file(p) for p in sorted((workspace / name).iterdir())})
        run = json.loads(record.read_text())
        assert run["seconds"] > 0 and run["resumed"] == 0 and run["dtype_used"] == "float32"
        assert {"device", "peak_memory_bytes", "versions"} <= set(run)
        assert 0 < run["chunk_seconds"][0] and sum(run["chunk_seconds"]) < run["seconds"]  # compilation: first chunk
        assert (
            len(run["chunk_seconds"]) == len(run["chunk_requests"]) and sum(run["chunk_requests"]) == result["requests"]
        )
    assert folders[0] == folders[1] and set(folders[0]) == {"predictions.jsonl", "summary.json"}
    assert "seconds" not in json.loads((workspace / "first" / "summary.json").read_text())


class GeneratingBackend(CountingBackend):
    """The real backend's prompts, with generate recorded (the answer's text does not matter here)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls_kwargs = []

    def generate(self, requests, **kwargs):
        self.calls_kwargs.append(kwargs)
        self.seen += requests
        return ["Yes"] * len(requests)


LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "  # conversation.py
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@pytest.mark.parametrize("answer_mode, tokens, temperature", [("paper", 512, 0.2), ("generate", 16, 0.0)])
def test_paper_mode_asks_the_authors_evaluator_question_with_the_image(
    workspace, monkeypatch, answer_mode, tokens, temperature
):
    cfg = _cfg(workspace, answer_mode=answer_mode, chat_format="llava_v1", view_prompt=(False,))
    backend = GeneratingBackend(cfg)
    _run(workspace, cfg, f"{answer_mode}_mode", monkeypatch, backend)
    assert {tuple(sorted(k.items())) for k in backend.calls_kwargs} == {
        (("max_new_tokens", tokens), ("seed", 0), ("temperature", temperature))
    }  # no stop string: until EOS
    assert backend.seen and all(len(r.images) == 1 for r in backend.seen)  # unlike their evaluator: the image
    records = [json.loads(line) for line in (workspace / f"{answer_mode}_mode/predictions.jsonl").open()]
    examples = {e.example_id: e for e in read_table(workspace / "prepared") if e.task == "true_false"}
    asked = [r for r in records if r["example_id"] in examples and r["configuration"] == "origin"]
    assert asked
    for record in asked:  # run_llava.py's llava_v1 prompt around the evaluator's question
        caption = examples[record["example_id"]].caption
        assert record["rendered_prompt"] == (
            LLAVA_V1_SYSTEM + " USER: <image>\n" + caption + ", please answer me yes or no ASSISTANT:"
        )
