"""Evaluation: metrics registered by name, the results schema, the harness and reports."""
