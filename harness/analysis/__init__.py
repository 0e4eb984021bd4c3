"""Analysis of the results database: statistics (stats), the HTML report (report), and the CI gate (check)."""
