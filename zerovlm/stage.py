"""What every stage entry point shares: logging, and turning user-facing errors into one clear line."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from zerovlm.io import ZeroVLMError


def run_stage(main: Callable[[], object]) -> None:
    """Run a stage's main(); a ZeroVLMError becomes `error: ...` on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("ZEROVLM_LOG", "INFO"),
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        main()
    except ZeroVLMError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
