"""`factory view`: a local, read-only web page to browse a store's records.

The server binds 127.0.0.1 only (and answers only requests addressed to it there, so a web page elsewhere
cannot reach it through a DNS name), opens the store read-only, and serves one static page plus a JSON API
whose paging, filters and search run in DuckDB (``factory.store.browse``). The page inserts every value
from a record as text, never as markup, and its Content Security Policy allows no inline script and no
other origin.
"""

from __future__ import annotations

from factory.view.server import HOST, serve

__all__ = ["HOST", "serve"]
