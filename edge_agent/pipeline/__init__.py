"""Pipelines: source -> preprocess -> infer -> decode -> hand-off, on a few named threads."""
