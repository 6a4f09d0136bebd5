"""The report stage. For now: the tables printed after `inspect` and at the end of a run."""

from tunesmith.report.data_table import data_tables
from tunesmith.report.summary import summary_table

__all__ = ["data_tables", "summary_table"]
