"""Test-only entry point: the infer stage with small chunks and a slow backend, so a test can kill a
multi-process launch part-way through. Run as `python -m tests.infer_with_delay <infer stage args>`."""

import time

from stages.infer import main
from zerovlm import answering
from zerovlm.pipeline import infer
from zerovlm.stage import run_stage

real_load_backend = infer.load_backend


class SlowBackend:
    def __init__(self, model):
        self.model = model

    def option_logprobs(self, requests):
        time.sleep(0.5)
        return self.model.option_logprobs(requests)

    def __getattr__(self, name):  # render_prompt, info, ...: the real backend's
        return getattr(self.model, name)


answering.CHUNK_JOBS = 2
infer.load_backend = lambda cfg, part_revisions=None: SlowBackend(real_load_backend(cfg, part_revisions))

if __name__ == "__main__":
    run_stage(main)
