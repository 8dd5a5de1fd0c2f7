"""Linkage, clustering, stable master IDs, survivorship and cross-checks (issue 4)."""
