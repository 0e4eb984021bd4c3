"""The results database: DuckDB schema and migrations, the single writer, and ingest of finished cells."""

from harness.store.db import (DATASET_COLUMNS, DEFAULT_DB, MIGRATIONS, RUN_COLUMNS, db_path, ingest_dataset,
                              ingest_run, ingested_ok, migrate, query, reader, writer)

__all__ = ["DATASET_COLUMNS", "DEFAULT_DB", "MIGRATIONS", "RUN_COLUMNS", "db_path", "ingest_dataset", "ingest_run",
           "ingested_ok", "migrate", "query", "reader", "writer"]
