"""Reports from finished run directories alone: Table 2, Table 3, intervals, comparisons and figures.

Imports go one way: runs (finding and reading run dirs) <- stats (intervals, p-values, label lists)
<- tables (Tables 2 and 3, formatting) and figures (plots) <- report (write_report: every file).
"""
