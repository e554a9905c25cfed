"""silverrec: model-based recommendation retrieval in one PyTorch graph.

Importing the package registers the ``torch.ops.silverrec`` custom ops, so a process that
loads an exported serving module needs only ``import silverrec``.
"""
from silverrec import ops  # noqa: F401  (registers torch.ops.silverrec.*)

__version__ = "0.1.0"
