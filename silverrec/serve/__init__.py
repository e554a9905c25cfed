"""Loading and querying exported serving graphs (needs only ``silverrec`` installed)."""
from silverrec.serve.artifact import load_artifact
from silverrec.serve.requests import RequestEncoder
from silverrec.serve.retriever import Retriever

__all__ = ["Retriever", "RequestEncoder", "load_artifact"]
