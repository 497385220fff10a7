"""Helpers for tests and benchmarks only: tiny randomly initialised models written through the real loaders,
oracle stand-ins that read ground truth, fault injection. Runtime code never imports this package
(tests/test_layout.py checks it)."""
