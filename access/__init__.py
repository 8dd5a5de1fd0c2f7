"""Analyst access to the golden data, each module importing only those listed before it:

- ``audit``: the append-only audit log;
- ``errors``: what access refuses, with what to do instead;
- ``policy``: the share policy of ``config/catalog.yaml`` and the database roles;
- ``release``: the analyst views' specs and what the share policy withholds from them;
- ``viewsql``: the SQL behind the views (masks per dialect, the k-anonymous person view);
- ``catalog``: the catalog of shared resources (信息资源目录) and the export's data dictionary;
- ``session``: the caller's own connection, and what they may do;
- ``review``: the review queue and stewards' decisions;
- ``query``: guarded read-only queries, and the scrub of analyst output;
- ``pseudonyms``: keyed pseudonyms for extracts;
- ``export``: Parquet extracts with a data dictionary;
- ``views``: installing the views, the catalog table, roles and grants after each publish;
- ``explain``: ``govmdm explain`` as an analyst may see it;
- ``lookup``: one person or enterprise, where every attribute came from.
"""
