"""Benchmarks behind `vfiotask bench`: one module per suite with `run(BenchOptions) -> dict` and
`render(dict) -> str`.

Shared measuring rules (docs/bench.md) and the options every suite takes live in `common`: warm
the host's memory before each measured run, interleave the variants, report medians of at least
five runs and ratios taken within one run.  `libvirtd` is the private libvirtd the libvirt suite
and the integration tests start and put back: test and benchmark support, not library API.
"""
