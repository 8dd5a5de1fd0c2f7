"""Analyst access to the golden data: views, share policy, query, export, lookup, catalog,
review decisions and the audit log."""
