"""funcprune benchmarks. From a clone of the repository: ``python -m benchmarks.run --help``,
``python -m benchmarks.multi_mask --help``."""
