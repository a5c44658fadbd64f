"""Benchmarks: a matrix of bundles x backends x threads measured on this machine (`edge-pse bench`), the
versioned report it writes (JSON, Markdown, self-contained HTML) and the regression check between two
reports (`edge-pse regress`). See docs/bench.md."""
