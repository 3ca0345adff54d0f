"""nanobatch benchmarks: `python -m benchmarks [name ...] [--quick]` (see __main__)."""
