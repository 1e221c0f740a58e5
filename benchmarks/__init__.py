"""Benchmarks of the toolkit against simpler baselines, on synthetic data and tiny models."""
