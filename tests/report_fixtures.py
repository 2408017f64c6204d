"""A scored grid instance built in a test (hand-made examples and answers, scored by the real score stage), and the
keys lm-evaluation-harness writes, which the report stage's lm-eval-shaped files must hold.

`scored_instance(root, dataset, vlm, ...)` writes what the report stage reads, in the pipeline's layout under
`root`: prepared/<dataset>/examples.jsonl, predictions/<dataset>/<vlm>/ (predictions.jsonl, summary.json),
predictions/<dataset>/<vlm>_run.json, and, from zerovlm.pipeline.score.run, grid/<dataset>/<vlm>/*.json and
scored/<dataset>/<vlm>/records.jsonl.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from zerovlm.config import DataConfig, InferConfig, ScoreConfig
from zerovlm.datasets.table import Example, write_table
from zerovlm.io import write_json, write_jsonl
from zerovlm.pipeline import score

RELATIONS = ("left of", "right of", "above", "below")

# What lm-eval writes into every aggregated results file, at commit 034ab03621186e68aa1f73ee1508370580ea77b5:
# evaluate()'s results_dict without groups (lm_eval/evaluator.py), simple_evaluate()'s `config`, `git_hash`,
# `date`, add_env_info's keys (lm_eval/loggers/utils.py), and save_results_aggregated's `task_hashes` and
# GeneralConfigTracker's fields (lm_eval/loggers/evaluation_tracker.py).
RESULTS_KEYS = {
    "results",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "config",
    "git_hash",
    "date",
    "pretty_env_info",
    "transformers_version",
    "lm_eval_version",
    "upper_git_hash",
    "task_hashes",
    "model_source",
    "model_name",
    "model_name_sanitized",
    "system_instruction",
    "system_instruction_sha",
    "fewshot_as_multiturn",
    "chat_template",
    "chat_template_sha",
    "start_time",
    "end_time",
    "total_evaluation_time_seconds",
}
CONFIG_KEYS = {  # simple_evaluate's results["config"] (model info aside)
    "model",
    "model_args",
    "batch_size",
    "batch_sizes",
    "device",
    "use_cache",
    "limit",
    "bootstrap_iters",
    "gen_kwargs",
    "random_seed",
    "numpy_seed",
    "torch_seed",
    "fewshot_seed",
}
# evaluate()'s logged sample, plus one key per metric (here "acc")
SAMPLE_KEYS = {
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
    "acc",
}


def examples(dataset: str, tasks: tuple[str, ...], per_task: int) -> list[Example]:
    table = []
    for i in range(per_task):
        image_id = hashlib.sha256(f"{dataset}/{i}".encode()).hexdigest()[:16]
        relation = RELATIONS[i % len(RELATIONS)]
        common = dict(dataset=dataset, split="test", image_id=image_id, image_file=f"images/{image_id}.png")
        if "true_false" in tasks:
            table.append(
                Example(
                    example_id=f"{dataset}/test/{i:05d}/tf",
                    task="true_false",
                    caption=f"The cat is {relation} the dog.",
                    options=("yes", "no"),
                    answer_index=i % 2,
                    relation=relation,
                    **common,
                )
            )
        if "multiple_choice" in tasks:
            table.append(
                Example(
                    example_id=f"{dataset}/test/{i:05d}/mc",
                    task="multiple_choice",
                    caption="",
                    options=tuple(f"The cat is {r} the dog." for r in RELATIONS),
                    answer_index=i % 4,
                    relation=relation,
                    **common,
                )
            )
    return table


def scored_instance(
    root: Path,
    dataset: str,
    vlm: str,
    tasks: tuple[str, ...] = ("true_false",),
    per_task: int = 6,
    configurations: tuple[str, ...] = ("origin", "left", "all"),
    not_evaluated: tuple[str, ...] = (),
    answer_mode: str = "loglik",
    seed: int = 0,
) -> None:
    """One instance whose model answers at random: log-probabilities, or for a generating `answer_mode` a
    text that is sometimes unreadable (an unparseable answer counts as wrong)."""
    rng = np.random.default_rng(seed)
    table = examples(dataset, tasks, per_task)
    write_table(root / "prepared" / dataset, table)
    infer = InferConfig(model=f"hub/{vlm}", answer_mode=answer_mode).model_dump()
    predictions = []
    for configuration in configurations:
        for with_view_prompt in (True, False):
            mode = "with_view_prompt" if with_view_prompt else "without_view_prompt"
            for example in table:
                answers = ["Yes", "No"] if example.task == "true_false" else ["A", "B", "C", "D"]
                prompt = f"USER: <image>\n{'[views] ' if with_view_prompt else ''}{example.caption} ASSISTANT:"
                answer = (
                    {"option_logprobs": [float(x) for x in -rng.random(len(answers)) * 5]}
                    if answer_mode == "loglik"
                    else {"output_text": str(rng.choice([*answers, "I cannot tell"]))}
                )
                predictions.append(
                    {
                        "record_id": f"{example.example_id}|{configuration}|{mode}",
                        "example_id": example.example_id,
                        "configuration": configuration,
                        "with_view_prompt": with_view_prompt,
                        "answers": answers,
                        "rendered_prompt": prompt,
                        **answer,
                    }
                )
    folder = root / "predictions" / dataset / vlm
    write_jsonl(folder / "predictions.jsonl", predictions)
    write_json(
        folder / "summary.json",
        {
            "answer_mode": answer_mode,
            "backend": infer["backend"],
            "model": infer["model"],
            "requests": len(predictions),
            "not_evaluated": {c: "takes 1 image" for c in not_evaluated},
            "prompts_sha256": "0" * 64,
        },
    )
    run = {"device": "cpu", "dtype_used": "float32", "seconds": 1.5, "versions": {"transformers": "5.0"}}
    write_json(
        folder.with_name(f"{vlm}_run.json"), {**run, "model_info": {"attention": "sdpa"}, "model_revision": None}
    )
    resolved = {"data": DataConfig().model_dump(), "infer": infer, "score": ScoreConfig().model_dump()}
    score.run(
        score.Paths(
            prepared=root / "prepared" / dataset,
            predictions=folder,
            metrics=root / "grid" / dataset / vlm,
            records=root / "scored" / dataset / vlm / "records.jsonl",
            infer_run=folder.with_name(f"{vlm}_run.json"),
        ),
        ScoreConfig(bootstrap_samples=20),
        dataset,
        vlm,
        resolved,
    )
