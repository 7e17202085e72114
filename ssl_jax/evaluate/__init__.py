"""Evaluation: kNN monitor, feature extraction."""
