"""zerovlm: the ZeroVLM experiment (novel views for VLM spatial reasoning) as a DVC pipeline."""

__version__ = "0.1.0"
