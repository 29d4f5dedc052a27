"""Scoring predictions: the predictions format, the reference evaluator (metrics, bootstrap intervals,
paired comparisons), its plots."""
