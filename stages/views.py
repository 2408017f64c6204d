"""Stage `views`: Zero-1-to-3 novel views of every unique prepared image, for each requested pose."""

import argparse
from pathlib import Path

from zerovlm.config import ViewsConfig, load_section
from zerovlm.datasets.table import read_table
from zerovlm.runtime import pin_revision
from zerovlm.stage import run_stage
from zerovlm.views.synthesize import synthesize_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="view store (shards + index)")
    parser.add_argument("--run-record", type=Path, default=None,
                        help="JSON with this run's timings, peak memory and counts (kept out of the store)")
    parser.add_argument("--model-source", type=Path, default=None,
                        help="the check stage's record of views.model (data/inputs/views.json): a hub id is "
                             "loaded at the commit it pins (without it: at views.revision as it stands)")
    args = parser.parse_args()
    cfg = load_section("views", ViewsConfig, args.params)
    if args.model_source is not None:
        cfg = pin_revision(cfg, args.model_source)
    synthesize_views(cfg, read_table(args.prepared), args.prepared, args.out, run_record=args.run_record)


if __name__ == "__main__":
    run_stage(main)
