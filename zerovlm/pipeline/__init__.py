"""The pipeline's stages, one module per dvc.yaml stage: check, models, prepare, pool, views, stitch, infer,
score, report, gallery.

Each module holds a frozen `Paths` (the folders and files the stage reads and writes, as dvc.yaml's cmd passes
them) and one `run(paths, ...)`: it reads the stage's inputs, calls the library (zerovlm/views, vlm, datasets,
scoring, report, stitching.py), which takes and returns data, and writes the stage's outputs atomically.
stages/<stage>.py is the command line around `run`.
"""
