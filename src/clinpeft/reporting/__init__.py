"""Reports from finished run directories alone: Table 2, Table 3, intervals, comparisons and figures."""
