"""Reports people look at: shutdown waits against the limit, rates by commit,
a campaign's posterior; in the terminal (terminal.py) and as one
self-contained HTML page (html.py, charts.py). data.py does the counting.

    from flakebot.report import report_page, write_report, write_reports
"""
from flakebot.report.html import report_page, write_report
from flakebot.report.publish import ReportLocation, write_reports

__all__ = ["report_page", "write_report", "write_reports", "ReportLocation"]
