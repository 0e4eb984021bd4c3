"""Statistics over the results: bootstrap intervals, paired comparisons, multiple-comparison correction.

`bootstrap`: the array functions (example resamples, the t test of a mean over seeds, corrections); `scores`: a
matrix's per-example scores from the database and the metrics over them; `tables`: the analysis of a matrix into the
stat_* tables, the verdicts against the baselines and the exchange rate; `family`: the primary family a matrix's
`analysis:` section declares (Holm within it, Benjamini-Hochberg over the rest).
"""

from harness.analysis.stats.bootstrap import (Options, adjust, boot_means, compare, effect_size, example_counts,
                                              is_binary, mcnemar, mean_interval, over_seeds, pooled_seed_variance,
                                              resample_counts, seed_counts, seed_test)
from harness.analysis.stats.scores import (BASELINES, ROLE_ORDER, Metric, Scores, Task, arm_role, load,
                                           metric_samples, metrics_for)
from harness.analysis.stats.family import (ArmInfo, Family, arms_from_runs, arms_from_spec, controls,
                                            of_matrix, of_runs, primary_family)
from harness.analysis.stats.tables import (EXCHANGE_COLUMNS, STAT_TABLES, VERDICT_COLUMNS, Tables, analyse,
                                           baseline_verdicts, corrected, exchange_rates, exchange_statement,
                                           primary_verdicts, write)

__all__ = ["Options", "adjust", "boot_means", "compare", "effect_size", "example_counts", "is_binary", "mcnemar",
           "mean_interval", "over_seeds", "pooled_seed_variance", "resample_counts", "seed_counts", "seed_test",
           "BASELINES", "ROLE_ORDER", "Metric", "Scores", "Task", "arm_role", "load", "metric_samples", "metrics_for",
           "ArmInfo", "Family", "arms_from_runs", "arms_from_spec", "controls", "of_matrix", "of_runs",
           "primary_family", "EXCHANGE_COLUMNS", "STAT_TABLES", "VERDICT_COLUMNS", "Tables", "analyse",
           "baseline_verdicts", "corrected", "exchange_rates", "exchange_statement", "primary_verdicts", "write"]
