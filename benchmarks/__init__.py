"""The benchmarks: one module per benchmark, `bench.py` runs them, `storm.py` is the boot storm (issue 19)."""
