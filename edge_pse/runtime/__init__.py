"""The on-device runtime: bundle in, audio in, enhanced audio out. Imports no torch (docs/architecture.md)."""
