"""Matplotlib figures for TensorBoard's Images tab (``SummaryWriter.add_figure``).

Each function takes plain numbers (from a report) and returns a closed-over ``Figure`` drawn with
the Agg backend (no display needed); :class:`~silverrec.train.tb_logging.TensorBoardLogger`
renders and closes it.

* :func:`recall_curve_figure`: recall@K against K for several rankings (exact model, served
  artifact, most popular);
* :func:`filter_recall_figure`: served-vs-exact recall@K per filter pass rate (log axis);
* :func:`latency_figure`: served latency against batch size (ms per call and per query);
* :func:`dot_vs_overarch_figure`: per task, recall@K of the dot product vs OverArch + Value Model.
"""
from typing import Mapping, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def recall_curve_figure(curves: Mapping[str, Tuple[Sequence[int], Sequence[float]]], title: str) -> Figure:
    """recall@K against K, one line per ranking.

    Args:
        curves (Mapping[str, Tuple[Sequence[int], Sequence[float]]]): ``{name: (ks, recalls)}``.
        title (str): the figure title (users and split).

    Example::

        >>> fig = recall_curve_figure({"exact": ([1, 10], [0.1, 0.3])}, "test")
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (ks, values) in curves.items():
        ax.plot(list(ks), list(values), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("recall@K")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig


def filter_recall_figure(points: Sequence[Tuple[str, float, float]], k: int, target: float) -> Figure:
    """Served-vs-exact recall@K (the index loss) per filter, against the filter's pass fraction.

    Args:
        points (Sequence[Tuple[str, float, float]]): ``(expression, pass fraction, recall_vs_exact@K)``.
        k (int): the cut-off.
        target (float): drawn as a horizontal line (the warning threshold).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for expr, fraction, value in points:
        ax.scatter([fraction], [value])
        ax.annotate(expr if len(expr) <= 32 else expr[:29] + "...", (fraction, value), fontsize=6,
                    textcoords="offset points", xytext=(3, 3))
    ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target}")
    ax.set_xscale("log")
    ax.set_xlabel("filter pass fraction")
    ax.set_ylabel(f"served-vs-exact recall@{k}")
    lows = [v for _, _, v in points]
    ax.set_ylim(min(lows + [target]) - 0.05, 1.005)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("index loss per filter")
    fig.tight_layout()
    return fig


def latency_figure(latency_ms: Mapping[str, float], backend: str) -> Figure:
    """Milliseconds per call and per query against the batch size (log-log).

    Args:
        latency_ms (Mapping[str, float]): ``{"<batch>": median ms per call}``.
        backend (str): the served graph's backend (``aoti`` or ``export``).
    """
    batches = sorted(int(b) for b in latency_ms)
    ms = [latency_ms[str(b)] for b in batches]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(batches, ms, marker="o", label="ms per call")
    ax.plot(batches, [m / b for m, b in zip(ms, batches)], marker="s", label="ms per query")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("milliseconds (median)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"served latency ({backend})")
    fig.tight_layout()
    return fig


def dot_vs_overarch_figure(tasks: Mapping[str, Mapping[str, float]], k: int) -> Figure:
    """Per task, recall@K of the dot-product ranking and of OverArch + Value Model (bars).

    Args:
        tasks (Mapping[str, Mapping[str, float]]): ``{task: {"dot": .., "overarch": ..}}``
            (``report["multitask"]["tasks"][task][f"recall@{k}"]``; ``value`` may be a task too).
        k (int): the cut-off.
    """
    names = list(tasks)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.4
    xs = range(len(names))
    for shift, kind in ((-width / 2, "dot"), (width / 2, "overarch")):
        ax.bar([x + shift for x in xs], [tasks[t].get(kind) or 0.0 for t in names], width, label=kind)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names)
    ax.set_ylabel(f"recall@{k}")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"dot product vs OverArch + Value Model (recall@{k})")
    fig.tight_layout()
    return fig
