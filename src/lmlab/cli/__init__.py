"""The `lmlab` command line (imports nothing heavy until a command runs)."""
