"""The results database: a versioned DuckDB schema, and one writer that ingests finished cells' artefacts.

DuckDB allows one read-write process or many read-only ones, so the writer opens the file only for the length of one
ingest transaction; `harness sql` and reports open it read-only (retrying briefly while an ingest holds it).
Every ingest deletes the run's rows and inserts them again inside one transaction: ingesting twice changes nothing,
and a kill mid-ingest leaves the previous state.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb

# Append-only: each migration runs once, in order, recorded in schema_migrations. Never edit a released one.
MIGRATIONS: list[tuple[str, str]] = [
    ("initial schema", """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,     -- content address: hash of the resolved cell config + data + harness version
        kind VARCHAR NOT NULL,          -- 'sft' (a trained cell) or 'base' (the untrained model, evaluated once)
        model VARCHAR, model_fingerprint VARCHAR,
        method VARCHAR, method_kind VARCHAR,   -- method label and its kind: full | lora | base
        arm VARCHAR, dataset_id VARCHAR, seed INTEGER,
        base_run_id VARCHAR,            -- the base evaluation this run is compared against
        config JSON, status VARCHAR NOT NULL, error VARCHAR,
        started_at TIMESTAMP, finished_at TIMESTAMP,
        prep_seconds DOUBLE, train_seconds DOUBLE, eval_seconds DOUBLE, wall_seconds DOUBLE,
        steps INTEGER, examples INTEGER, epochs DOUBLE,
        train_tokens BIGINT,            -- all non-pad tokens trained on
        response_tokens BIGINT,         -- tokens that carried loss
        trainable_params BIGINT, total_params BIGINT,
        weights_path VARCHAR, env JSON, harness_version VARCHAR);
    CREATE TABLE matrix_cells (matrix VARCHAR, run_id VARCHAR, PRIMARY KEY (matrix, run_id));
    CREATE TABLE datasets (
        dataset_id VARCHAR PRIMARY KEY, recipe JSON, parent VARCHAR, n_examples INTEGER,
        n_by_skill JSON, content_hash VARCHAR, path VARCHAR, build_seconds DOUBLE, created_at TIMESTAMP);
    CREATE TABLE data_steps (
        dataset_id VARCHAR, step_index INTEGER, step VARCHAR, params JSON, n_in INTEGER, n_out INTEGER,
        score_stats JSON, PRIMARY KEY (dataset_id, step_index));
    CREATE TABLE data_decisions (        -- one row per example a step dropped, and why
        dataset_id VARCHAR, step_index INTEGER, step VARCHAR, example_id VARCHAR, reason VARCHAR, score DOUBLE);
    CREATE TABLE train_steps (
        run_id VARCHAR, step INTEGER, loss DOUBLE, lr DOUBLE, tokens INTEGER, label_tokens INTEGER, seconds DOUBLE,
        PRIMARY KEY (run_id, step));
    CREATE TABLE evals (
        run_id VARCHAR, task VARCHAR, task_group VARCHAR, metric VARCHAR, value DOUBLE, stderr DOUBLE, n INTEGER,
        higher_is_better BOOLEAN, is_primary BOOLEAN, PRIMARY KEY (run_id, task, metric));
    CREATE TABLE samples (
        run_id VARCHAR, task VARCHAR, task_group VARCHAR, doc_id INTEGER, prompt VARCHAR, target VARCHAR,
        response VARCHAR, score DOUBLE, metrics JSON, PRIMARY KEY (run_id, task, doc_id));
    -- per run and task: the primary metric, the base model's value, and the gain (positive = better than base)
    CREATE VIEW run_scores AS
    SELECT r.run_id, e.task, e.task_group, e.metric, e.value, b.value AS base_value, e.higher_is_better,
           CASE WHEN e.higher_is_better THEN e.value - b.value ELSE b.value - e.value END AS gain
    FROM runs r JOIN evals e ON e.run_id = r.run_id AND e.is_primary
    LEFT JOIN evals b ON b.run_id = r.base_run_id AND b.task = e.task AND b.metric = e.metric;
    -- one row per run of a matrix. learn: mean primary score over learn tasks; forget: mean relative loss of the
    -- base's performance over forget tasks ((base - run) / base, oriented so that positive means forgotten)
    CREATE VIEW summary AS
    SELECT m.matrix, r.run_id, r.model, r.method, r.method_kind, r.arm, r.seed, r.status,
           avg(s.value) FILTER (WHERE s.task_group = 'learn') AS learn,
           avg(s.gain) FILTER (WHERE s.task_group = 'learn') AS learn_gain,
           avg(-s.gain / nullif(abs(s.base_value), 0)) FILTER (WHERE s.task_group = 'forget') AS forget,
           r.examples, r.steps, r.train_tokens, r.train_seconds, r.eval_seconds
    FROM runs r JOIN matrix_cells m USING (run_id) LEFT JOIN run_scores s USING (run_id)
    GROUP BY ALL;
    """),
    ("cost accounting", """
    ALTER TABLE runs ADD COLUMN hardware VARCHAR;          -- e.g. 'cpu: AMD EPYC 9454 (2 threads)' or 'cuda: NVIDIA H100'
    ALTER TABLE runs ADD COLUMN tokens_per_second DOUBLE;  -- train_tokens / train_seconds
    ALTER TABLE runs ADD COLUMN peak_rss_bytes BIGINT;     -- the cell process's peak resident memory
    ALTER TABLE runs ADD COLUMN peak_gpu_bytes BIGINT;     -- torch.cuda.max_memory_allocated (NULL on CPU)
    ALTER TABLE runs ADD COLUMN weights_bytes BIGINT;      -- adapter or checkpoint size on disk
    ALTER TABLE runs ADD COLUMN train_flops DOUBLE;        -- estimate, see harness/train/cost.py
    ALTER TABLE runs ADD COLUMN mfu DOUBLE;                -- model FLOPs utilisation (GPU with a known peak only)
    ALTER TABLE runs ADD COLUMN device_hours DOUBLE;       -- wall hours x devices of the whole cell (prep+train+eval)
    ALTER TABLE runs ADD COLUMN cost_usd DOUBLE;           -- ESTIMATE: device_hours x price per hour (cost.PRICES)
    ALTER TABLE datasets ADD COLUMN generated_tokens BIGINT;    -- tokens written by models (best-of-K, distillation)
    ALTER TABLE datasets ADD COLUMN device_hours DOUBLE;        -- curation compute (generation, embeddings, scoring)
    ALTER TABLE datasets ADD COLUMN cost_usd DOUBLE;            -- ESTIMATE, like runs.cost_usd
    -- what a run cost, with its arm's curation counted in: "curated" pays for its curation
    CREATE VIEW costs AS
    SELECT r.run_id, r.kind, r.model, r.method, r.arm, r.seed, r.hardware, r.train_tokens, r.train_flops,
           r.tokens_per_second, r.peak_rss_bytes, r.peak_gpu_bytes, r.weights_bytes, r.mfu,
           r.device_hours, r.cost_usd AS train_cost_usd, coalesce(d.cost_usd, 0) AS curation_cost_usd,
           r.cost_usd + coalesce(d.cost_usd, 0) AS total_cost_usd
    FROM runs r LEFT JOIN datasets d USING (dataset_id);
    """),
    ("matrix runs", """
    CREATE TABLE matrix_runs (          -- one row per `harness matrix run` that ran cells: where the wall time went
        matrix VARCHAR, finished_at TIMESTAMP, cells_run INTEGER, failed INTEGER, workers INTEGER,
        wall_seconds DOUBLE, compute_seconds DOUBLE, overhead_seconds DOUBLE, overhead_parts JSON);
    """),
    ("statistics", """
    -- written by `harness report` (harness/analysis/stats.py); intervals are two-way bootstrap (seeds x examples) intervals
    -- metric: learn | learn_gain | forget (as in the summary view) | <task> (primary metric) | <task>:vs_base
    CREATE TABLE stat_runs (
        matrix VARCHAR, run_id VARCHAR, metric VARCHAR, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
        higher_is_better BOOLEAN, n_examples INTEGER, PRIMARY KEY (matrix, run_id, metric));
    CREATE TABLE stat_arms (            -- mean over seeds of (model, method, arm); the base model is method 'base'
        matrix VARCHAR, model VARCHAR, method VARCHAR, method_kind VARCHAR, arm VARCHAR, role VARCHAR,
        metric VARCHAR, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, higher_is_better BOOLEAN, n_seeds INTEGER,
        seeds JSON, n_examples INTEGER);
    CREATE TABLE stat_comparisons (     -- a vs b paired by seed and example; diff = a - b, better: 'a' | 'b'
        matrix VARCHAR, kind VARCHAR, model VARCHAR, a_method VARCHAR, a_arm VARCHAR, b_method VARCHAR,
        b_arm VARCHAR, metric VARCHAR, higher_is_better BOOLEAN, a_value DOUBLE, b_value DOUBLE, diff DOUBLE,
        ci_low DOUBLE, ci_high DOUBLE, se DOUBLE, effect_size DOUBLE, p_value DOUBLE, p_mcnemar DOUBLE,
        p_holm DOUBLE, q_bh DOUBLE, significant BOOLEAN, better VARCHAR, n_seeds INTEGER, n_examples INTEGER,
        matched VARCHAR);
    CREATE TABLE stat_params (matrix VARCHAR PRIMARY KEY, n_boot INTEGER, confidence DOUBLE, alpha DOUBLE,
        seed INTEGER, computed_at TIMESTAMP DEFAULT current_timestamp);
    """),
    ("curation provenance", """
    ALTER TABLE datasets ADD COLUMN n_source INTEGER;         -- examples the source gave
    ALTER TABLE datasets ADD COLUMN n_bad INTEGER;            -- malformed source rows skipped (skip_bad)
    ALTER TABLE data_steps ADD COLUMN seconds DOUBLE;         -- the step's wall time in its first build
    ALTER TABLE data_steps ADD COLUMN generated_tokens BIGINT; -- tokens models wrote in this step (best_of_k, distill)
    ALTER TABLE data_steps ADD COLUMN compute_seconds DOUBLE; -- model time, cached outputs counted at their cost
    ALTER TABLE data_decisions ADD COLUMN prompt VARCHAR;     -- the dropped example itself
    ALTER TABLE data_decisions ADD COLUMN response VARCHAR;
    """),
    ("check", """
    -- baselines saved with `harness check --save-baseline NAME` (the same JSON as --export-baseline writes)
    CREATE TABLE check_baselines (name VARCHAR PRIMARY KEY, created_at TIMESTAMP DEFAULT current_timestamp,
        source VARCHAR, body JSON);
    -- one row per compared (cell, metric) of every `harness check`; change = candidate - baseline, paired by
    -- seed and example where both sides allow; status: regression | improved | within allowance | not significant
    CREATE TABLE check_results (
        check_id VARCHAR, checked_at TIMESTAMP, baseline VARCHAR, candidate VARCHAR, cell VARCHAR, metric VARCHAR,
        gated BOOLEAN, baseline_value DOUBLE, candidate_value DOUBLE, change DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
        allowed DOUBLE, p_value DOUBLE, p_adjusted DOUBLE, paired VARCHAR, status VARCHAR, policy JSON,
        PRIMARY KEY (check_id, cell, metric));
    """),
    ("executors", """
    ALTER TABLE matrix_runs ADD COLUMN executor VARCHAR;       -- local | ray | slurm
    -- compute by kind (cells; curation: data steps that ran models, counted as compute, not overhead)
    ALTER TABLE matrix_runs ADD COLUMN compute_parts JSON;
    """),
    ("chat training", """
    -- rows longer than train.max_length (a chat row: its whole conversation) and what train.too_long did with them
    ALTER TABLE runs ADD COLUMN rows_over_length INTEGER;
    ALTER TABLE runs ADD COLUMN rows_dropped INTEGER;          -- too_long: drop (truncate: 0)
    ALTER TABLE runs ADD COLUMN trained_tokens_lost BIGINT;    -- assistant tokens cut off or dropped with their row
    CREATE TABLE length_decisions (     -- one row per over-length example of a cell: truncated | dropped
        run_id VARCHAR, example_id VARCHAR, action VARCHAR, tokens INTEGER, trained_tokens INTEGER,
        trained_tokens_lost INTEGER);
    """),
    ("matrix run: capacity lost", """
    -- capacity lost with workers that died (a lost Ray node, a requeued Slurm task): work on cells that ran again and
    -- slots left empty, in wall seconds; neither compute nor overhead
    ALTER TABLE matrix_runs ADD COLUMN lost_seconds DOUBLE;
    """),
    ("primary family and exchange rate", """
    -- the matrix's `analysis:` section (spec.Analysis) as of its last `harness matrix run`: its primary family
    CREATE TABLE matrix_analysis (matrix VARCHAR PRIMARY KEY, analysis JSON,
        updated_at TIMESTAMP DEFAULT current_timestamp);
    -- primary: Holm over the primary family (p_holm); exploratory: Benjamini-Hochberg over the rest (q_bh)
    ALTER TABLE stat_comparisons ADD COLUMN family VARCHAR;
    ALTER TABLE stat_params ADD COLUMN family VARCHAR;        -- the primary family in words, with its size
    -- per curated arm: the bulk examples it scores like (score = intercept + slope x ln(examples) over the bulk
    -- sizes, inverted), with its bootstrap interval; status: within | above | below (the sizes tried) | flat
    CREATE TABLE stat_exchange (
        matrix VARCHAR, model VARCHAR, method VARCHAR, metric VARCHAR, arm VARCHAR, examples DOUBLE, value DOUBLE,
        bulk_arms JSON, bulk_sizes JSON, slope DOUBLE, intercept DOUBLE, equiv_examples DOUBLE, ci_low DOUBLE,
        ci_high DOUBLE, status VARCHAR, n_seeds INTEGER, arm_cost_usd DOUBLE, bulk_cost_usd DOUBLE,
        statement VARCHAR);
    """),
    ("contamination", """
    -- written by every `harness matrix run` for the arms it built: per arm and evaluation task, the training rows
    -- that contain one of the task's documents (word n-grams; harness/data/curate/contamination.py)
    CREATE TABLE contamination (
        matrix VARCHAR, arm VARCHAR, dataset_id VARCHAR, task VARCHAR,
        task_group VARCHAR,             -- learn | forget | include (a task of an include folder the matrix does not score)
        method VARCHAR, n INTEGER,      -- ngram and words per n-gram
        train_rows INTEGER, eval_docs INTEGER,
        overlapping_rows INTEGER,       -- training rows that overlap at least one of the task's documents
        overlapping_docs INTEGER,       -- the task's documents found in the training rows
        examples JSON,                  -- up to five [example_id, doc_id] pairs
        checked_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (matrix, arm, task));
    """),
    ("small-sample tests", """
    -- differences and arm means are tested with Student's t over seeds (harness/analysis/stats/bootstrap.py: example
    -- noise from a bootstrap over examples, seed noise from the seeds' spread), no longer a two-way bootstrap; df: its
    -- Welch-Satterthwaite degrees of freedom (about seeds - 1 when seed noise dominates; infinite with one seed)
    ALTER TABLE stat_comparisons ADD COLUMN df DOUBLE;
    ALTER TABLE check_results ADD COLUMN df DOUBLE;
    """),
]


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection):
    """BEGIN ... COMMIT; ROLLBACK and re-raise when the block raises (a kill leaves the previous state)."""
    con.execute("BEGIN")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations; returns the schema version."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, "
                "applied_at TIMESTAMP DEFAULT current_timestamp)")
    done = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, (name, sql) in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        with transaction(con):
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
    return len(MIGRATIONS)


def _connect(path: Path, read_only: bool, wait_s: float = 30.0,
             config: dict | None = None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as e:  # another process holds the write lock: an ingest is in progress
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def writer(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(path, read_only=False)
    try:
        migrate(con)
        yield con
    finally:
        con.close()


# A user's query may touch the results database and nothing else: no COPY ... TO a file, no read_text/read_csv of
# another file, no ATTACH, no extension download; locked, so the query cannot SET it back.
SANDBOX = {"enable_external_access": False, "lock_configuration": True}


@contextmanager
def reader(path: Path, sandbox: bool = False):
    if not path.exists():
        raise FileNotFoundError(f"no results database at {path} (run `harness matrix run` first, or pass --db)")
    con = _connect(path, read_only=True, config=SANDBOX if sandbox else None)
    try:
        yield con
    finally:
        con.close()


def _replace(con, table: str, run_id: str, parquet: Path, columns: list[str]) -> None:
    con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
    if parquet.exists():
        con.execute(f"INSERT INTO {table} (run_id, {', '.join(columns)}) SELECT ?, {', '.join(columns)} "
                    f"FROM read_parquet(?)", [run_id, str(parquet)])


RUN_COLUMNS = ["run_id", "kind", "model", "model_fingerprint", "method", "method_kind", "arm", "dataset_id", "seed",
               "base_run_id", "config", "status", "error", "started_at", "finished_at", "prep_seconds",
               "train_seconds", "eval_seconds", "wall_seconds", "steps", "examples", "epochs", "train_tokens",
               "response_tokens", "trainable_params", "total_params", "weights_path", "env", "harness_version",
               "hardware", "tokens_per_second", "peak_rss_bytes", "peak_gpu_bytes", "weights_bytes", "train_flops",
               "mfu", "device_hours", "cost_usd", "rows_over_length", "rows_dropped", "trained_tokens_lost"]
# A cell's artefacts (results/runs/<id>/<table>.parquet, written by harness/run/cell.py): their columns and Arrow
# types. Ingest copies each into the table of the same name, with the run_id in front.
ARTEFACT_COLUMNS: dict[str, dict[str, str]] = {
    "train_steps": {"step": "int32", "loss": "float64", "lr": "float64", "tokens": "int32", "label_tokens": "int32",
                    "seconds": "float64"},
    "evals": {"task": "string", "task_group": "string", "metric": "string", "value": "float64", "stderr": "float64",
              "n": "int32", "higher_is_better": "bool", "is_primary": "bool"},
    "samples": {"task": "string", "task_group": "string", "doc_id": "int32", "prompt": "string", "target": "string",
                "response": "string", "score": "float64", "metrics": "string"},
    "length_decisions": {"example_id": "string", "action": "string", "tokens": "int32", "trained_tokens": "int32",
                         "trained_tokens_lost": "int32"},
}
DATASET_COLUMNS = ["dataset_id", "recipe", "parent", "n_examples", "n_by_skill", "content_hash", "path",
                   "build_seconds", "created_at", "generated_tokens", "device_hours", "cost_usd", "n_source", "n_bad"]


def ingest_run(con, run_dir: Path, matrix: str | None) -> dict:
    """Load one finished cell's artefacts (results/runs/<id>/) into the database, replacing any earlier copy."""
    row = json.loads((run_dir / "result.json").read_text())
    run_id = row["run_id"]
    values = [json.dumps(row[c]) if c in ("config", "env") else row.get(c) for c in RUN_COLUMNS]
    with transaction(con):
        con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
        con.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                    values)
        for table, columns in ARTEFACT_COLUMNS.items():
            _replace(con, table, run_id, run_dir / f"{table}.parquet", list(columns))
        if matrix:
            con.execute("INSERT OR IGNORE INTO matrix_cells VALUES (?, ?)", [matrix, run_id])
    return row


def ingest_dataset(con, data_dir: Path) -> None:
    """Load a built data set's card and decisions (results/data/<id>/)."""
    card = json.loads((data_dir / "card.json").read_text())
    did = card["dataset_id"]
    with transaction(con):
        con.execute("DELETE FROM datasets WHERE dataset_id = ?", [did])
        row = {**card, "dataset_id": did, "recipe": json.dumps(card["recipe"]), "path": str(data_dir),
               "n_by_skill": json.dumps(card["n_by_skill"])}
        con.execute(f"INSERT INTO datasets ({', '.join(DATASET_COLUMNS)}) VALUES "
                    f"({', '.join('?' * len(DATASET_COLUMNS))})", [row.get(c) for c in DATASET_COLUMNS])
        con.execute("DELETE FROM data_steps WHERE dataset_id = ?", [did])
        for i, st in enumerate(card["steps"]):
            con.execute("INSERT INTO data_steps (dataset_id, step_index, step, params, n_in, n_out, score_stats, "
                        "seconds, generated_tokens, compute_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [did, i, st["step"], json.dumps(st["params"]), st["n_in"], st["n_out"],
                         json.dumps(st.get("score_stats")), st.get("seconds"), st.get("generated_tokens"),
                         st.get("compute_seconds")])
        con.execute("DELETE FROM data_decisions WHERE dataset_id = ?", [did])
        # BY NAME: decisions written before migration 5 (curation provenance) lack prompt and response: NULL
        con.execute("INSERT INTO data_decisions BY NAME SELECT * FROM read_parquet(?)",
                    [str(data_dir / "decisions.parquet")])


def matrices(con) -> list[str]:
    """The matrices in the database, the most recently run first: the one whose last trained cell finished last."""
    return [m for (m,) in con.execute("""
        SELECT m.matrix FROM matrix_cells m JOIN runs r USING (run_id) GROUP BY m.matrix
        ORDER BY bool_or(r.kind = 'sft') DESC, max(r.finished_at) DESC NULLS LAST, m.matrix""").fetchall()]


def latest_matrix(con) -> str | None:
    """The most recently run matrix (None in a database without one)."""
    known = matrices(con)
    return known[0] if known else None


def ingested_ok(con, run_ids: list[str]) -> set[str]:
    if not run_ids:
        return set()
    rows = con.execute("SELECT run_id FROM runs WHERE status = 'ok' AND run_id IN (SELECT unnest(?))",
                       [run_ids]).fetchall()
    return {r for (r,) in rows}


def adopt_finished(con, matrix: str, results: Path, finished: set[str], all_ids: list[str]) -> None:
    """Before a matrix runs: ingest finished cells a kill left un-ingested, claim finished cells shared with another
    matrix, and drop cells the matrix file no longer has (their runs stay in `runs` and come back when the config
    does), so the summary shows one row per cell."""
    for rid in finished - ingested_ok(con, list(finished)):
        ingest_run(con, results / "runs" / rid, matrix)
    for rid in finished:
        con.execute("INSERT OR IGNORE INTO matrix_cells VALUES (?, ?)", [matrix, rid])
    con.execute("DELETE FROM matrix_cells WHERE matrix = ? AND run_id NOT IN (SELECT unnest(?))", [matrix, all_ids])


def cell_scores(con, run_id: str) -> tuple[float | None, float | None]:
    """(learn, forget) of one ingested run, as the summary view has them."""
    row = con.execute("SELECT learn, forget FROM summary WHERE run_id = ? LIMIT 1", [run_id]).fetchone()
    return row if row else (None, None)


def record_matrix_run(con, matrix: str, executor: str, cells_run: int, failed: int, workers: int, wall: float,
                      compute: float, overhead: float, overhead_parts: dict, compute_parts: dict,
                      lost: float = 0.0) -> None:
    con.execute("INSERT INTO matrix_runs (matrix, finished_at, cells_run, failed, workers, wall_seconds, "
                "compute_seconds, overhead_seconds, overhead_parts, compute_parts, executor, lost_seconds) "
                "VALUES (?, current_timestamp, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [matrix, cells_run, failed, workers, wall, compute, overhead, json.dumps(overhead_parts),
                 json.dumps(compute_parts), executor, lost])


def record_analysis(con, matrix: str, analysis: dict) -> None:
    """Keep the matrix's `analysis:` section (its primary family) for `harness report` and `harness show`."""
    con.execute("INSERT OR REPLACE INTO matrix_analysis (matrix, analysis, updated_at) "
                "VALUES (?, ?, current_timestamp)", [matrix, json.dumps(analysis)])


def matrix_analysis(con, matrix: str) -> dict | None:
    """The `analysis:` section recorded for the matrix (None: an older database, or not run here)."""
    has = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'matrix_analysis'").fetchone()
    row = con.execute("SELECT analysis FROM matrix_analysis WHERE matrix = ?", [matrix]).fetchone() if has[0] else None
    return json.loads(row[0]) if row else None


CONTAMINATION_COLUMNS = ["matrix", "arm", "dataset_id", "task", "task_group", "method", "n", "train_rows", "eval_docs",
                         "overlapping_rows", "overlapping_docs", "examples"]


def record_contamination(con, matrix: str, rows: list[dict]) -> None:
    """Replace the matrix's audit of the arms in `rows` (one dict per arm x task, CONTAMINATION_COLUMNS)."""
    with transaction(con):
        for arm in {r["arm"] for r in rows}:
            con.execute("DELETE FROM contamination WHERE matrix = ? AND arm = ?", [matrix, arm])
        if rows:
            con.executemany(f"INSERT INTO contamination ({', '.join(CONTAMINATION_COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(CONTAMINATION_COLUMNS))})",
                            [[matrix] + [json.dumps(r[c]) if c == "examples" else r[c]
                                         for c in CONTAMINATION_COLUMNS[1:]] for r in rows])


def summary_rows(db: Path, matrix: str) -> tuple[list[str], list[tuple]]:
    with reader(db) as con:
        cur = con.execute("""
            SELECT method, arm, seed, round(learn, 3) AS learn, round(learn_gain, 3) AS learn_vs_base,
                   round(forget, 3) AS forget, examples, steps, round(train_seconds, 1) AS train_s, status
            FROM summary WHERE matrix = ?
            ORDER BY method_kind = 'base' DESC, method, arm, seed""", [matrix])
        return [d[0] for d in cur.description], cur.fetchall()


def query(path: Path, sql: str):
    """Run one query that reads the database and nothing else (no writes, no files); returns (column names, rows)."""
    with reader(path, sandbox=True) as con:
        cur = con.execute(sql)
        return [d[0] for d in cur.description or []], cur.fetchall()
