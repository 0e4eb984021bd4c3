"""harness: an evaluation-centred benchmark and fine-tune harness for language models."""

__version__ = "0.1.0"
# Bumped whenever generated data (world, pool, tasks, pretraining corpus) changes, so cached artefacts are rebuilt.
DATA_VERSION = 1
