"""`edge-pse distill`: train a student from a teacher's output (knowledge distillation)."""

from edge_pse.cli.train import add_distill_arguments as add_arguments
from edge_pse.cli.train import run_distill as run

__all__ = ["add_arguments", "run"]
