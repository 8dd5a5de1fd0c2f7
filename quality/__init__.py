"""Data-quality suites, department scorecards, reports and their delivery (issue 5)."""
