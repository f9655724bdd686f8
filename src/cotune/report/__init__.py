"""Training-run reports: figures and a Markdown summary from run directories (``cotune report``).

``make_report(run_dirs, out_dir, smooth=1)`` is the Python API; matplotlib is needed only to draw
(``pip install 'cotune[report]'``).
"""

from cotune.report.make import make_report
from cotune.report.runs import ReportError, Run, read_run, summarize

__all__ = ["ReportError", "Run", "make_report", "read_run", "summarize"]
