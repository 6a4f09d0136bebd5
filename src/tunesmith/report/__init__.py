"""The report stage: the tables printed after `inspect` and at the end of a run, and the
self-contained HTML report of a run folder."""

from tunesmith.report.data_table import data_tables
from tunesmith.report.summary import baselines_ahead, summary_table

__all__ = ["baselines_ahead", "data_tables", "summary_table"]
