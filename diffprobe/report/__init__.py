"""The self-contained, offline HTML report of a sweep; see :mod:`diffprobe.report.html` for how and why."""
from diffprobe.report.html import SiteScore, lower_is_better, top_sites, write_report

__all__ = ["SiteScore", "lower_is_better", "top_sites", "write_report"]
