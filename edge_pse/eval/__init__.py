"""Evaluation: metrics shared by `edge-pse evaluate` and the benchmark harness."""
