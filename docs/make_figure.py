"""Make the README's figure from a finished demo run: one example's stitched `all` input, enlarged, and the
exact prompt the VLM saw with it (the view prompt and the question, in the model's chat template).

    make demo && python docs/make_figure.py     # writes docs/figures/demo-all.png, prints the prompt

The demo's panels are a few dozen pixels wide, so the image is enlarged by a whole factor with
nearest-neighbour sampling: every pixel stays the one the model saw, only bigger.
"""

import argparse
from pathlib import Path

from PIL import Image

from zerovlm.datasets.table import read_table
from zerovlm.io import ZeroVLMError, read_jsonl
from zerovlm.stage import run_stage
from zerovlm.store import ShardReader

CONFIGURATION = "all"  # the paper's four-panel grid: original, left, right, random


def stitched_key(stitched: ShardReader, image_id: str) -> str:
    """The store key of `image_id`'s `all` input, found by the metadata the stitch stage writes."""
    for key in stitched.keys():
        record = stitched.metadata(key)
        if record.get("image_id") == image_id and record.get("configuration") == CONFIGURATION:
            return key
    raise ZeroVLMError(
        f"{stitched.folder}: no {CONFIGURATION!r} input of image {image_id}; "
        f"keep {CONFIGURATION!r} in stitch.configurations and re-run the demo"
    )


def rendered_prompt(predictions: Path, example_id: str) -> str:
    """The prompt the model saw for `example_id` with the `all` input and the view prompt on."""
    for record in read_jsonl(predictions):
        if (record["example_id"], record["configuration"], record["with_view_prompt"]) == (
            example_id,
            CONFIGURATION,
            True,
        ):
            return record["rendered_prompt"]
    raise ZeroVLMError(
        f"{predictions}: no {CONFIGURATION!r} request with the view prompt for {example_id}; "
        "keep true in infer.view_prompt and re-run the demo"
    )


def make_figure(run: Path, dataset: str, vlm: str, example_id: str | None, out: Path, size_px: int) -> str:
    """Write the enlarged input to `out` and return its prompt. `example_id` None: the first true/false example."""
    examples = read_table(run / "data/prepared" / dataset)
    if example_id is None:
        example = next((e for e in examples if e.task == "true_false"), examples[0])
    else:
        example = next((e for e in examples if e.example_id == example_id), None)
        if example is None:
            raise ZeroVLMError(f"--example-id {example_id!r}: not in {run / 'data/prepared' / dataset}")
    with ShardReader(run / "data/stitched" / dataset) as stitched:
        image = stitched.image(stitched_key(stitched, example.image_id))
    prompt = rendered_prompt(run / "data/predictions" / dataset / vlm / "predictions.jsonl", example.example_id)
    factor = max(1, round(size_px / image.width))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(out)
    return prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="root of a clone with a finished demo run")
    parser.add_argument("--dataset", default="synthetic_sparse", help="a dataset of the demo's grid")
    parser.add_argument("--vlm", default="llava_tiny", help="a VLM of the demo's grid")
    parser.add_argument("--example-id", default=None, help="default: the dataset's first true/false example")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "figures/demo-all.png")
    parser.add_argument("--size-px", type=int, default=256, help="about this wide after the whole-factor enlargement")
    args = parser.parse_args()
    print(make_figure(args.run, args.dataset, args.vlm, args.example_id, args.out, args.size_px))


if __name__ == "__main__":
    run_stage(main)
