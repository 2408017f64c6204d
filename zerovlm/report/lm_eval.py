"""Results in lm-evaluation-harness's output schema, so that tools that read lm-eval output read zerovlm's.

One lm-eval task per dataset x task x view configuration x view-prompt mode, named
`zerovlm_<dataset>_<tf|mc>_<configuration>_<vp|novp>` (e.g. `zerovlm_vsr_random_tf_all_vp`; characters
other than letters, digits and '_' become '_', as lm-eval's `sanitize_task_name` does). Its documents are
the dataset's examples of that task in table order (`doc_id`), so one example has the same `doc_id` in every
configuration's task. A configuration the model could not be given (summary.json `not_evaluated`) has no task.
Per VLM, as lm-eval's EvaluationTracker writes them into the model's folder:

    results_<date>.json          `results` (task -> {"alias", "acc,none", "acc_stderr,none"}), `configs`,
                                 `versions`, `n-shot`, `higher_is_better`, `n-samples`, `config` (the model),
                                 `git_hash`, `date`, `task_hashes` and the tracker's and environment keys
    samples_<task>_<date>.jsonl  one line per document: doc_id, doc, target, arguments, resps,
                                 filtered_resps, filter, metrics, doc_hash, prompt_hash, target_hash, acc

`acc` is the score stage's verdict (data/scored/<dataset>/<vlm>/records.jsonl: an unparseable answer is
wrong), so `acc,none` is the mean over the samples and equals summary.json's `accuracy` to its 4 decimals.
Log-likelihood answering is lm-eval's `multiple_choice` output type: one request per answer option, whose
response is [log-probability, is_greedy]; zerovlm's backends do not compute is_greedy, so it is null.
Generation is `generate_until`: the response is the generated text, unparsed.

Shapes follow EleutherAI/lm-evaluation-harness at commit 034ab03621186e68aa1f73ee1508370580ea77b5:
lm_eval/evaluator.py (simple_evaluate's `config`, `git_hash`, `date`; evaluate's results_dict and logged
samples), lm_eval/evaluator_utils.py (consolidate_results: `alias`, "<metric>,<filter>" keys),
lm_eval/loggers/evaluation_tracker.py (file names, `task_hashes`, GeneralConfigTracker's keys, arguments
as gen_args_<i>/arg_<j>), lm_eval/loggers/utils.py (add_env_info's keys), lm_eval/api/metrics.py
(mean_stderr), lm_eval/utils.py (hash_string: SHA-256 hex).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime

from zerovlm import __version__
from zerovlm.datasets.table import Example
from zerovlm.io import ZeroVLMError
from zerovlm.report.table import TASK_KEYS, TASK_ORDER

FILTER = "none"  # lm-eval's name for "no filter": metric keys read "acc,none"
PROMPT_MODES = {"with_view_prompt": "vp", "without_view_prompt": "novp"}


@dataclass(frozen=True)
class Instance:
    """What one grid instance (dataset x VLM) holds: its example table, scored records (records.jsonl),
    predictions by record id (predictions.jsonl), provenance.json and the infer stage's run record."""

    dataset: str
    examples: list[Example]
    records: list[dict]
    predictions: dict[str, dict]
    provenance: dict
    run: dict


@dataclass(frozen=True)
class Task:
    """One lm-eval task: its config, its samples in doc order, and how many documents it has."""

    config: dict
    samples: list[dict]
    documents: int


def task_name(dataset: str, task: str, configuration: str, prompt_mode: str) -> str:
    return re.sub(r"\W", "_", f"zerovlm_{dataset}_{TASK_KEYS[task]}_{configuration}_{PROMPT_MODES[prompt_mode]}")


def date_id(date: float) -> str:
    """The date in lm-eval's file names: local ISO time with '-' for ':' (no '_', which splits the names)."""
    return datetime.fromtimestamp(date).isoformat().replace(":", "-")


def hash_string(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def mean_stderr(values: list[float]) -> float | str:
    """lm-eval's standard error of a mean: sample standard deviation / sqrt(n); "N/A" for one value."""
    if len(values) < 2:
        return "N/A"
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) / math.sqrt(len(values))


def _generation_kwargs(infer: dict) -> dict | None:
    """What a generating answer mode decoded with (answering.py: greedy unless answer_mode is `paper`)."""
    if infer["answer_mode"] == "loglik":
        return None
    temperature = infer["temperature"] if infer["answer_mode"] == "paper" else 0.0
    return {
        "until": [],
        "max_gen_toks": infer["max_new_tokens"][infer["answer_mode"]],
        "temperature": temperature,
        "do_sample": temperature > 0,
    }


def _sample(doc_id: int, example: Example, record: dict, prediction: dict, gen_kwargs: dict | None) -> dict:
    prompt = prediction["rendered_prompt"]
    if gen_kwargs is None:
        target = str(example.answer_index)
        arguments = [(prompt, answer) for answer in prediction["answers"]]
        filtered = [[logprob, None] for logprob in prediction["option_logprobs"]]
        responses = [[response] for response in filtered]
    else:
        target = prediction["answers"][example.answer_index]
        arguments = [(prompt, gen_kwargs)]
        filtered = [prediction["output_text"]]
        responses = [filtered]
    doc = example.to_record()
    return {
        "doc_id": doc_id,
        "doc": doc,
        "target": target,
        "arguments": {
            f"gen_args_{i}": {f"arg_{j}": arg for j, arg in enumerate(args)} for i, args in enumerate(arguments)
        },
        "resps": responses,
        "filtered_resps": filtered,
        "filter": FILTER,
        "metrics": ["acc"],
        "doc_hash": hash_string(json.dumps(doc, indent=2, ensure_ascii=False)),
        "prompt_hash": hash_string(prompt),
        "target_hash": hash_string(target),
        "acc": 1.0 if record["correct"] else 0.0,
    }


def instance_tasks(instance: Instance, source: str) -> dict[str, Task]:
    """task name -> Task for one grid instance; `source` names the records file in errors."""
    params, infer = instance.provenance["params"], instance.provenance["params"]["infer"]
    gen_kwargs = _generation_kwargs(infer)
    doc_ids = {
        task: {e.example_id: i for i, e in enumerate(e for e in instance.examples if e.task == task)}
        for task in TASK_ORDER
    }
    by_id = {example.example_id: example for example in instance.examples}
    cells: dict[tuple[str, str, str], list[tuple[int, dict]]] = {}
    for record in instance.records:
        example = by_id.get(record["example_id"])
        prediction = instance.predictions.get(record["record_id"])
        if example is None or prediction is None:
            missing = "example" if example is None else "prediction"
            raise ZeroVLMError(
                f"{source}: record {record['record_id']} has no {missing}; re-run score (`dvc repro score`)"
            )
        cell = (example.task, record["configuration"], record["prompt_mode"])
        cells.setdefault(cell, []).append((doc_ids[example.task][example.example_id], record))
    tasks = {}
    for (task, configuration, prompt_mode), rows in sorted(cells.items()):
        name = task_name(instance.dataset, task, configuration, prompt_mode)
        samples = [
            _sample(doc_id, by_id[record["example_id"]], record, instance.predictions[record["record_id"]], gen_kwargs)
            for doc_id, record in sorted(rows, key=lambda row: row[0])
        ]
        config = {
            "task": name,
            "dataset_path": params["data"]["source"],
            "dataset_name": instance.dataset,
            "test_split": params["data"]["split"],
            "output_type": "multiple_choice" if gen_kwargs is None else "generate_until",
            "num_fewshot": 0,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "repeats": 1,
            **({} if gen_kwargs is None else {"generation_kwargs": gen_kwargs}),
            "metadata": {
                "version": __version__,
                "task": task,
                "configuration": configuration,
                "view_prompt": prompt_mode == "with_view_prompt",
                "question_template": infer["question_template"],
                "answer_mode": infer["answer_mode"],
                "chat_format": infer["chat_format"],
                "rendered_prompt_sha256": instance.provenance["rendered_prompts_sha256"][configuration][prompt_mode],
                "data_limit": params["data"]["limit"],
            },
        }
        tasks[name] = Task(config, samples, len(doc_ids[task]))
    return tasks


def _shared(values: dict[str, object]) -> object:
    """The value every dataset of a VLM has (one model, one configuration), else dataset -> value."""
    distinct = {json.dumps(value, sort_keys=True) for value in values.values()}
    return next(iter(values.values())) if len(distinct) == 1 else values


def vlm_results(vlm: str, tasks: dict[str, Task], instances: list[Instance], git_hash: str | None, date: float) -> dict:
    """The aggregated results document of one VLM: `tasks` from instance_tasks over its `instances`."""
    results, configs, hashes = {}, {}, {}
    for name, task in sorted(tasks.items()):
        acc = [sample["acc"] for sample in task.samples]
        results[name] = {"alias": name, "acc,none": sum(acc) / len(acc), "acc_stderr,none": mean_stderr(acc)}
        configs[name] = task.config
        hashes[name] = hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in task.samples))
    provenance = {i.dataset: i.provenance for i in instances}
    infer = provenance[instances[0].dataset]["params"]["infer"]
    runs = {i.dataset: i.run for i in instances}
    names = sorted(results)
    return {
        "results": results,
        "group_subtasks": {name: [] for name in names},  # no groups: every task stands alone
        "configs": configs,
        "versions": {name: __version__ for name in names},
        "n-shot": {name: 0 for name in names},
        "higher_is_better": {name: {"acc": True} for name in names},
        "n-samples": {
            name: {"original": tasks[name].documents, "effective": len(tasks[name].samples)} for name in names
        },
        "config": {
            "model": infer["backend"],
            "model_args": infer,
            "model_dtype": _shared({d: run.get("dtype_used") for d, run in runs.items()}),
            "model_revision": infer["revision"],
            "model_sha": _shared({d: p["infer"].get("model_revision") for d, p in provenance.items()}),
            "model_info": _shared({d: run.get("model_info") for d, run in runs.items()}),
            "batch_size": infer["batch_size"],
            "batch_sizes": [],
            "device": _shared({d: run.get("device") for d, run in runs.items()}),
            "use_cache": None,
            "limit": _shared({d: p["params"]["data"]["limit"] for d, p in provenance.items()}),
            "bootstrap_iters": _shared({d: p["params"]["score"]["bootstrap_samples"] for d, p in provenance.items()}),
            "gen_kwargs": _generation_kwargs(infer),
            "random_seed": infer["seed"],
            "numpy_seed": _shared({d: p["params"]["score"]["seed"] for d, p in provenance.items()}),
            "torch_seed": infer["seed"],
            "fewshot_seed": None,
        },
        "git_hash": git_hash,
        "date": date,
        "pretty_env_info": None,
        "transformers_version": _shared({d: run.get("versions", {}).get("transformers") for d, run in runs.items()}),
        "lm_eval_version": None,  # written by zerovlm, not by lm-eval
        "upper_git_hash": None,
        "task_hashes": hashes,
        "model_source": infer["backend"],
        "model_name": infer["model"],
        "model_name_sanitized": vlm,
        "system_instruction": None,
        "system_instruction_sha": None,
        "fewshot_as_multiturn": False,
        "chat_template": infer["chat_format"],
        "chat_template_sha": None,
        "start_time": None,
        "end_time": None,
        "total_evaluation_time_seconds": str(round(sum(run.get("seconds", 0.0) for run in runs.values()), 3)),
    }
