"""Shipped bundles exported from the shipped checkpoints: the runtime's defaults, no torch needed."""
