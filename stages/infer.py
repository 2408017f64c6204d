"""Stage `infer`: the VLM answers every question for every configuration, with and without view prompt."""

import argparse
from pathlib import Path

from zerovlm.config import InferConfig, load_params, load_section, vlm_config
from zerovlm.inference import infer_stage
from zerovlm.runtime import pin_revision
from zerovlm.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--vlm", help="a grid VLM: `vlms.<name>` merged over `infer` (default: `infer`)")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--stitched", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="predictions folder")
    parser.add_argument("--run-record", type=Path, default=None,
                        help="JSON file for the run's timings, peak memory and versions (kept out of --out)")
    parser.add_argument("--model-source", type=Path, default=None,
                        help="the check stage's record of the VLM (data/inputs/vlm-<name>.json): a hub id is "
                             "loaded at the commit it pins (without it: at the revision param as it stands)")
    args = parser.parse_args()
    cfg = vlm_config(load_params(args.params), args.vlm) if args.vlm else load_section("infer", InferConfig, args.params)
    if args.model_source is not None:
        cfg = pin_revision(cfg, args.model_source)
    infer_stage(cfg, args.prepared, args.stitched, args.out, run_record=args.run_record)


if __name__ == "__main__":
    run_stage(main)
