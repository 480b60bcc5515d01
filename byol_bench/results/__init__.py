"""A sweep's results on disk: its tables, atomic writes, the folder lock."""
