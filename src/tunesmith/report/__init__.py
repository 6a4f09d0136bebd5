"""The report stage. For now: the summary table printed at the end of a run."""

from tunesmith.report.summary import summary_table

__all__ = ["summary_table"]
