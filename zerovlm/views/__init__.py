"""Zero-1-to-3 novel-view synthesis: poses, checkpoint layouts, the sampler, the views stage."""
