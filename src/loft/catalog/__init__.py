"""The platform's one SQL database (SQLAlchemy Core): SQLite by default, PostgreSQL for a
fleet. Tables are in :mod:`loft.catalog.schema`; migrations run on open."""

from __future__ import annotations

from loft.catalog.database import HEAD_REVISION, Catalog, CatalogError, normalize_url

__all__ = ["HEAD_REVISION", "Catalog", "CatalogError", "normalize_url"]
