"""Zero-1-to-3 novel-view synthesis: poses, checkpoint layouts, the sampler and its jobs (the views stage:
zerovlm/pipeline/views.py)."""
