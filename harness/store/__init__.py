"""The results database: DuckDB schema and migrations, the single writer, and ingest of finished cells."""

from harness.store.db import (DATASET_COLUMNS, DEFAULT_DB, MIGRATIONS, RUN_COLUMNS, adopt_finished, cell_scores,
                              db_path, ingest_dataset, ingest_run, ingested_ok, migrate, query, reader,
                              record_matrix_run, summary_rows, writer)

__all__ = ["DATASET_COLUMNS", "DEFAULT_DB", "MIGRATIONS", "RUN_COLUMNS", "adopt_finished", "cell_scores", "db_path",
           "ingest_dataset", "ingest_run", "ingested_ok", "migrate", "query", "reader", "record_matrix_run",
           "summary_rows", "writer"]
