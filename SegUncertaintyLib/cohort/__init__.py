"""Cohorts: many volumes through one model, with a review worklist that needs no references.

- ``cases``: what the inputs name (files, folders, a CSV) as cases with stable, unique ids.
- ``worker``: one case in a worker process (the model is loaded once per process and kept).
- ``executors``: where the cases run: local worker processes, a Ray cluster or a Dask cluster.
- ``run``: the cohort run: resume, progress with an ETA, failures recorded, the worklist written.
- ``worklist``: worklist.csv / worklist.html, the review-priority rule, and "reviewed" written back.
"""
