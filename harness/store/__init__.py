"""The results database: DuckDB schema and migrations, the single writer, and ingest of finished cells."""

from harness.store.db import (ARTEFACT_COLUMNS, DATASET_COLUMNS, MIGRATIONS, RUN_COLUMNS, adopt_finished, cell_scores,
                              ingest_dataset, ingest_run, ingested_ok, latest_matrix, matrices, matrix_analysis,
                              migrate, query, reader, record_analysis, record_contamination, record_matrix_run,
                              summary_rows, transaction, writer)

__all__ = ["ARTEFACT_COLUMNS", "DATASET_COLUMNS", "MIGRATIONS", "RUN_COLUMNS", "adopt_finished", "cell_scores",
           "ingest_dataset", "ingest_run", "ingested_ok", "latest_matrix", "matrices", "matrix_analysis", "migrate",
           "query", "reader", "record_analysis", "record_contamination", "record_matrix_run", "summary_rows",
           "transaction", "writer"]
