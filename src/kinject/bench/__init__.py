"""Performance suites of `kinject bench` (methods, stages, arch, levers): commands that measure
and write `bench.json` + `summary.md`. See docs/performance.md for the measured numbers."""
