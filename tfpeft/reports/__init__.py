"""Reports that show how a run, several runs or a search went: pictures, tables and report.md.

matplotlib draws on its Agg canvas only (see ``plots``), so reports work without a display.
"""

from tfpeft.reports.comparison import compare
from tfpeft.reports.run_report import write_run_report
from tfpeft.reports.search_report import write_search_report

__all__ = ["compare", "write_run_report", "write_search_report"]
