"""What every stage entry point shares: logging, and turning user-facing errors into one clear line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from zerovlm.io import ZeroVLMError


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(); a ZeroVLMError becomes `error: ...` on stderr and exit status 2, Ctrl-C one
    line saying that finished work is kept (exit status 130, as the shell reports an interrupt)."""
    logging.basicConfig(level=os.environ.get("ZEROVLM_LOG", "INFO"),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except ZeroVLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: this stage published no output (views and infer keep their finished work in a "
              "partial store beside it, and a re-run resumes from there)", file=sys.stderr)
        sys.exit(130)
