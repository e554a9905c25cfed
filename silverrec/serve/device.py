"""The device an export is built on or a ``Retriever`` serves on, checked where it is chosen.

Entry points take a device as a string (``silverrec-export device=cuda``, ``Retriever(path,
device="cuda")``, ``silverrec-serve --device cuda``) and pass the resolved ``torch.device`` down;
modules never look it up themselves. A device this machine cannot run fails here with a
``ValueError`` naming the option, not later deep inside torch.
"""
import torch

SERVING_DEVICES = ("cpu", "cuda")


def resolve_device(device: str, option: str) -> torch.device:
    """``device`` as a ``torch.device`` this machine can run.

    Args:
        device (str): ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
        option (str): how the caller names the setting in messages (``"device"``, ``"--device"``).

    Returns:
        torch.device: the device (``cuda`` without an index stays the current CUDA device).

    Example::

        >>> resolve_device("cpu", "device")
        device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{option}={device!r} is not a device: {err}") from None
    if dev.type not in SERVING_DEVICES:
        raise ValueError(f"{option}={device!r}: silverrec serves on one of {SERVING_DEVICES}, got device type {dev.type!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ValueError(f"{option}={device!r}: CUDA is not available on this machine ({why}, torch "
                             f"{torch.__version__}); use {option}=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def device_name(device: torch.device) -> str:
    """The device as recorded in an artifact's metadata: its type (``"cpu"`` or ``"cuda"``), so
    an export made on ``cuda:1`` loads on any GPU."""
    return device.type
