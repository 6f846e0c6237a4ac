"""The embedded adapter: one SQLite file in WAL mode, writes committed in groups."""
