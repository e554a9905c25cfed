"""Loading and querying exported serving modules (needs only ``silverrec`` installed)."""
from silverrec.serve.artifact import ExportedRetriever, load_artifact
from silverrec.serve.encoding import encode_users

__all__ = ["ExportedRetriever", "encode_users", "load_artifact"]
