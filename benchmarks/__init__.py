"""Measured comparisons (not timed tests): ``python -m benchmarks`` runs them all."""
