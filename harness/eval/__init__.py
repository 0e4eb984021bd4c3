"""Evaluation: lm-eval tasks (ours under tasks/ and lm-eval's own), their fingerprints, and per-example scoring."""
