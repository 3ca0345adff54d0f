"""The shell layer."""
