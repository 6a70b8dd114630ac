"""Evaluation with frozen features: label propagation and its benchmarks."""
