"""Statistics over the results: bootstrap intervals, paired comparisons, multiple-comparison correction.

`bootstrap`: the array functions (the two-way bootstrap over seeds x examples, its intervals and tests); `scores`: a
matrix's per-example scores from the database and the metrics over them; `tables`: the analysis of a matrix into the
stat_* tables, and the verdicts against the baselines.
"""

from harness.analysis.stats.bootstrap import (Options, adjust, boot_means, compare, effect_size, example_counts,
                                              interval, is_binary, mcnemar, mean_interval, over_seeds,
                                              resample_counts, seed_counts, wald)
from harness.analysis.stats.scores import (BASELINES, ROLE_ORDER, Metric, Scores, Task, arm_role, load,
                                           metric_samples, metrics_for)
from harness.analysis.stats.tables import STAT_TABLES, Tables, analyse, baseline_verdicts, write

__all__ = ["Options", "adjust", "boot_means", "compare", "effect_size", "example_counts", "interval", "is_binary",
           "mcnemar", "mean_interval", "over_seeds", "resample_counts", "seed_counts", "wald", "BASELINES",
           "ROLE_ORDER", "Metric", "Scores", "Task", "arm_role", "load", "metric_samples", "metrics_for",
           "STAT_TABLES", "Tables", "analyse", "baseline_verdicts", "write"]
