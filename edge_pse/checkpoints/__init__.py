"""Shipped checkpoints trained by this project (`<name>.pt`) and their model cards (`<name>.md`)."""
