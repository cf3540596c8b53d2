"""RUN/report: report.json, report.md (the paper's table layout), curves.png, the cost table."""
