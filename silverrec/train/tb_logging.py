"""TensorBoard logging (rank 0 only): scalars during training, hparams with final metrics."""
import os
from typing import Dict, Mapping, Optional

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

    def hparams(self, hparams: Mapping[str, object], metrics: Mapping[str, float]) -> None:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._writer.add_hparams(flat, {f"hparam/{k}": float(v) for k, v in metrics.items()}, run_name=".")

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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
