"""The embedded demo: a SQLite clinic, a local archive folder and a DuckDB warehouse."""
