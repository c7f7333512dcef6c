"""Evaluation: the judge, FID, the metric suite and the decoding ablation."""
