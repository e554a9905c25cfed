"""TensorBoard logging (rank 0 only): scalars during training, hparams with final metrics,
figures, histograms, the embedding projector and the custom-scalars layout."""
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger:
    """A thin wrapper over ``SummaryWriter`` with silverrec's tag layout.

    Args:
        log_dir (str): event file folder (``tensorboard --logdir`` it).
    """

    def __init__(self, log_dir: str) -> None:
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        for k, v in values.items():
            self._writer.add_scalar(f"{prefix}{k}", float(v), global_step=step)

    def figure(self, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure as an image (:mod:`silverrec.train.tensorboard_figures`); closes it."""
        self._writer.add_figure(tag, figure, global_step=step, close=True)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self._writer.add_histogram(tag, np.asarray(values, dtype=np.float64), global_step=step)

    def embedding(self, tag: str, vectors: torch.Tensor, metadata: Sequence[Sequence[str]],
                  header: Sequence[str], step: int) -> None:
        """Rows of ``vectors`` [R, D] in the projector, with one metadata row (columns ``header``) each."""
        self._writer.add_embedding(vectors.detach().float(), metadata=[list(m) for m in metadata],
                                   metadata_header=list(header), tag=tag, global_step=step)

    def layout(self, layout: Mapping[str, Mapping[str, List[Any]]]) -> None:
        """The custom-scalars layout (``{category: {chart: ["Multiline", [tag regexes]]}}``)."""
        self._writer.add_custom_scalars({c: dict(charts) for c, charts in layout.items()})

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float], run_name: str = ".") -> None:
        """An hparams session (``run_name``: a sub-run of the log dir, ``.`` = the log dir itself)."""
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._writer.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=run_name)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def scalars_layout() -> Dict[str, Dict[str, List[Any]]]:
    """TensorBoard's custom-scalars layout: the charts grouped as train, valid, test, served, index
    (tag regexes; the tags of :mod:`silverrec.train.train`, :mod:`silverrec.train.evaluate` and
    :mod:`silverrec.train.tensorboard_served`)."""
    def chart(*patterns: str) -> List[Any]:
        return ["Multiline", list(patterns)]

    return {
        "train": {"loss": chart(r"train/loss.*"), "learning rate": chart(r"train/lr"),
                    "examples per second": chart(r"train/examples_per_s")},
        "valid": {"recall": chart(r"valid/recall@.*", r"valid/popularity_recall@.*", r"valid/hr@.*"),
                    "ndcg": chart(r"valid/ndcg@.*", r"valid/popularity_ndcg@.*")},
        "test": {"recall": chart(r"test/recall@.*", r"test/popularity_recall@.*", r"test/hr@.*"),
                   "ndcg": chart(r"test/ndcg@.*", r"test/popularity_ndcg@.*"),
                   "multi-task (dot vs OverArch)": chart(r"test/multitask/.*")},
        "served": {"recall against held-out items": chart(r"^served/[^/]*/recall@.*"),
                     "ndcg": chart(r"^served/[^/]*/ndcg@.*"),
                     "value recall": chart(r"^served/[^/]*/value_recall@.*"),
                     "latency ms": chart(r"served/latency_ms/.*"),
                     "coverage and Gini": chart(r"served/exposure/.*")},
        "index": {"served-vs-exact recall (index loss)": chart(r"^served/[^/]*/recall_vs_exact@.*"),
                    "index loss per filter class": chart(r"^served/index_loss/.*"),
                    "filter pass fraction": chart(r"^served/[^/]*/pass_fraction")},
    }


def make_logger(log_dir: Optional[str], is_main: bool) -> Optional[TensorBoardLogger]:
    """A logger on rank 0 when a log dir is configured (no ``logger`` config: none)."""
    return TensorBoardLogger(log_dir) if (log_dir and is_main) else None


def flatten(d: Mapping[str, object], prefix: str = "") -> Dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for hparams)."""
    out: Dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
