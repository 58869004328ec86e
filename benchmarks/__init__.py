"""Benchmarks of the retention pipeline at scale, on a dedicated embedded PostgreSQL.

`uv run python -m benchmarks.run` (or `uv run retention-pipeline benchmark`) builds a synthetic app
dataset with set-based SQL, measures the pipeline's assets, jobs, trigger and sender against bare
SQL and the provider's rate-limit bound, and writes `benchmarks/results/latest.{md,json}`.
"""
