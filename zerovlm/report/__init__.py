"""Reports over the whole grid: the paper-shaped results table, DVC plot data, provenance, the gallery."""
