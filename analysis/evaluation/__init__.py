"""The evaluation harness: compare runs, matched density, long-context tasks, planted benchmarks."""
