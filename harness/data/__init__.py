"""Data: the skills world, sources, recipes of curation steps, generation and embeddings -> cached data sets."""
