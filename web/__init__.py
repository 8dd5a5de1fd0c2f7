"""The web pages of govmdm: the data steward's review page (``govmdm review serve``).

Server-rendered (Starlette and Jinja2, no JavaScript framework, nothing from a CDN), bound to
127.0.0.1 only. Everything it shows and decides goes through :mod:`access.review`.
"""
