"""``LossWatch``: notices a non-finite training loss without reading the loss every step.

Reading the loss on the host (``float(loss)``) waits for the GPU to finish the step, so the
trainer reads it only every ``log_every`` steps. In between, :meth:`LossWatch.update` keeps, on
the loss's device, the first step whose loss was NaN/inf and its value (two tiny device ops, no
host sync); :meth:`LossWatch.check` reads them once, at logging, validation and checkpoint
steps, and raises naming that step, so no checkpoint is written from a diverged model.
"""
from typing import Optional

import torch
from torch import Tensor


class LossWatch:
    """The first non-finite loss of a run, tracked on the device.

    Example::

        >>> watch = LossWatch()
        >>> watch.update(torch.tensor(0.5), step=1)
        >>> watch.update(torch.tensor(float("nan")), step=2)
        >>> watch.update(torch.tensor(0.7), step=3)
        >>> watch.check()
        Traceback (most recent call last):
        ...
        FloatingPointError: training loss became nan at step 2; lower the learning rates
    """

    def __init__(self) -> None:
        self._first_bad: Optional[Tensor] = None  # int64 [], -1 while every loss was finite
        self._bad_value: Optional[Tensor] = None

    def update(self, loss: Tensor, step: int) -> None:
        """Notes ``loss`` (a scalar tensor) of ``step``, on its device: no host sync."""
        loss = loss.detach()
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._bad_value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        new = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(new, step, self._first_bad)
        self._bad_value = torch.where(new, loss, self._bad_value)

    def check(self) -> None:
        """Raises ``FloatingPointError`` naming the first non-finite loss (one host read)."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            raise FloatingPointError(f"training loss became {float(self._bad_value)} at step "
                                     f"{int(self._first_bad)}; lower the learning rates")
