"""Example site policies shipped with hpcgate (data files)."""
