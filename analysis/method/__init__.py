"""The online method: per-layer probe, budgets, query-aware and sharing tests, layout, trace.

Imports only `sharedattn.kernels` and torch. docs/method.md maps each step to its function here.
"""
