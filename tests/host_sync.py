"""Finds host syncs in a code path without a GPU: run it on ``meta`` tensors under a recorder.

A host sync is any point where the host waits for a device value: ``.item()``, ``int(t)``,
``float(t)``, ``bool(t)`` and ``.tolist()`` (all ``aten._local_scalar_dense``), ``nonzero`` and
the other ops whose output size depends on values (``masked_select``, indexing with a boolean
mask, ``unique``,
``repeat_interleave`` of a tensor without ``output_size``, ``equal``, ``is_nonzero``), and
every copy of a CUDA tensor to the CPU (``.cpu()``, ``.to("cpu")``, ``.numpy()``).

:func:`no_host_sync` runs a function on ``meta`` tensors (the stand-in for CUDA tensors: only
shapes, dtypes and devices exist, no value can be read; fake CUDA tensors would be closer, but
the CPU build of torch refuses to index them) under :class:`HostSyncRecorder`, which sees every
aten op the Python code issues. ``torch.ops.silverrec.*`` calls are routed to their CUDA
launchers (``silverrec.ops.triton.CUDA_IMPLS``), whose Triton kernels are swapped for no-op
launches, so the launchers' own torch code (grouping, probe counts, merges) is checked as it
runs on a GPU, not the ops' fake impls. A sync raises :class:`HostSync` at once, naming the op and
the innermost ``silverrec`` frame; an op that cannot run on ``meta`` fails the run too.
"""
import contextlib
import importlib
import os
import traceback
from typing import Any, Callable, Dict, Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_SYNC_OPS = {"_local_scalar_dense": "reads a device value on the host (.item(), int(), float(), bool(), .tolist())",
             "nonzero": "nonzero: its output size is a device value", "masked_select": "data-dependent size",
             "_unique": "data-dependent size", "_unique2": "data-dependent size", "unique_dim": "data-dependent size",
             "unique_consecutive": "data-dependent size", "equal": "returns a host bool", "is_nonzero": "host bool",
             "nonzero_numpy": "data-dependent size"}


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class HostSync(AssertionError):
    """A host sync found on the path under test."""


def _where() -> str:
    """The innermost frame of silverrec or of the tests on the stack: ``path:line in function``."""
    frames = [(os.path.abspath(f.filename), f) for f in traceback.extract_stack()[:-1]]
    ours = [(path, f) for path, f in frames if path.startswith(_REPO_ROOT + os.sep) and "site-packages" not in path
            and os.path.basename(path) != "host_sync.py"]
    if not ours:
        return "?"
    path, f = ours[-1]
    return f"{os.path.relpath(path, _REPO_ROOT)}:{f.lineno} in {f.name}"


def _devices(tree: Any) -> List[torch.device]:
    return [t.device for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


@contextlib.contextmanager
def _kernels_swapped() -> Iterator[None]:
    """Every ``@triton.jit`` kernel of ``silverrec.ops.triton`` replaced by a launch that does nothing."""
    from triton.runtime.jit import JITFunction

    import silverrec.ops.triton as package

    swapped: List[Tuple[Any, str, Any]] = []
    for name in package._OPS + ("ivf_int8_topk_grouped",):
        try:
            module = importlib.import_module(f"silverrec.ops.triton.{name}")
        except ImportError:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction) and value.__module__ == module.__name__:
                swapped.append((module, attr, value))
                setattr(module, attr, _NoLaunch())
    try:
        yield
    finally:
        for module, attr, value in reversed(swapped):
            setattr(module, attr, value)


class _NoLaunch:
    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class HostSyncRecorder(TorchDispatchMode):
    """Records every aten op and raises :class:`HostSync` on a sync (see the module docstring).

    Args:
        ops (List[str]): receives ``"namespace::name"`` of every op seen (e.g. to show that the
            path under test really ran the CUDA launchers).
    """

    def __init__(self, ops: List[str]) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        packet = func._overloadpacket.__name__
        self.ops.append(f"{func.namespace}::{packet}")
        if packet in _SYNC_OPS:
            raise HostSync(f"host sync: aten.{packet} ({_SYNC_OPS[packet]}) at {_where()}")
        if packet == "repeat_interleave" and func._overloadname == "Tensor" and kwargs.get("output_size") is None:
            raise HostSync(f"host sync: repeat_interleave of a tensor without output_size at {_where()}")
        if packet in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in (args[1] or ())):
            raise HostSync(f"host sync: aten.{packet} with a boolean index (its size is a device value) at {_where()}")
        if packet in ("_to_copy", "to", "copy_") and _to_cpu(packet, args, kwargs):
            raise HostSync(f"host sync: aten.{packet} copies a device tensor to the CPU at {_where()}")
        if func.namespace == "silverrec":
            from silverrec.ops.triton import CUDA_IMPLS

            if not any(d.type == "meta" for d in _devices((args, kwargs))):
                return func(*args, **kwargs)
            with HostSyncRecorder(self.ops):  # the launcher's own ops, recorded too
                return CUDA_IMPLS[packet]["CUDA"](*args, **kwargs)
        out = func(*args, **kwargs)
        if any(d.type == "meta" for d in _devices((args, kwargs))) and any(d.type == "cpu" for d in _devices(out)):
            raise HostSync(f"host sync: aten.{packet} copies a device tensor to the CPU at {_where()}")
        return out


def _to_cpu(packet: str, args: tuple, kwargs: Dict[str, Any]) -> bool:
    """Whether a ``_to_copy`` / ``to`` / ``copy_`` call moves a ``meta`` (device) tensor to the CPU."""
    if packet == "copy_":
        return args[0].device.type == "cpu" and isinstance(args[1], torch.Tensor) and args[1].device.type == "meta"
    src = args[0]
    target = kwargs.get("device") or next((a for a in args[1:] if isinstance(a, (torch.device, str))), None)
    return isinstance(src, torch.Tensor) and src.device.type == "meta" and target is not None and \
        torch.device(target).type == "cpu"


_HOST_METHODS = ("tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def _host_methods_refused() -> Iterator[None]:
    """``Tensor.tolist``/``numpy``/``cpu``/``item``/``bool``/``int``/``float`` of a ``meta`` tensor raise
    :class:`HostSync` (some of them never reach the dispatcher on ``meta``)."""
    saved = {name: getattr(torch.Tensor, name) for name in _HOST_METHODS}

    def refuse(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.device.type == "meta":
                raise HostSync(f"host sync: Tensor.{name}() at {_where()}")
            return real(self, *args, **kwargs)
        return method

    for name, real in saved.items():
        setattr(torch.Tensor, name, refuse(name, real))
    try:
        yield
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def on_meta(tree: Any) -> Any:
    """``tree`` with every tensor replaced by a ``meta`` tensor of the same shape, strides and dtype."""
    def convert(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return torch.utils._pytree.tree_map(convert, tree)


def no_host_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[Any, List[str]]:
    """Runs ``fn(*args, **kwargs)`` on ``meta`` tensors and raises :class:`HostSync` at a host sync.

    Args:
        fn (Callable[..., Any]): the code path; its tensor arguments (any pytree) become ``meta``
            tensors of the same shapes and dtypes (values are not kept: a path whose control
            flow depends on values cannot run, which is the point).

    Returns:
        Tuple[Any, List[str]]: ``fn``'s (meta) output and the ops it issued.
    """
    args, kwargs = on_meta((args, kwargs))
    ops: List[str] = []
    with _kernels_swapped(), _host_methods_refused(), HostSyncRecorder(ops):
        out = fn(*args, **kwargs)
    return out, ops


def module_state_on_meta(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones too) of ``module`` as a ``meta`` tensor,
    for ``torch.func.functional_call``."""
    state = {k: v.detach() for k, v in module.named_parameters()}
    state.update(module.named_buffers())
    return on_meta(state)
