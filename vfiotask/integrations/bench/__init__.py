"""Benchmarks behind `vfiotask bench`: one module per suite with `run(...) -> dict` and `render(dict) -> str`.

Shared measuring rules (docs/bench.md, following the project's measurement notes) live in
`common`: warm the host's memory before each measured run, interleave the variants, report
medians of at least five runs and ratios taken within one run.
"""
