"""Runnable funcprune examples. From a clone of the repository: ``python -m examples.<name> --help``."""
