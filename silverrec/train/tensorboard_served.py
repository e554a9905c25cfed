"""TensorBoard output of ``silverrec-eval model=...`` (and ``make demo``): the ``served`` section
as scalars, figures, histograms and an hparams session.

Tags (``<filter>`` is the expression, or ``none``)::

    served/<filter>/{pass_fraction, heldout_users, recall@K, ndcg@K, value_recall@K, recall_vs_exact@K}
    served/<filter>/tasks/<task>/recall@K
    served/latency_ms/batch_<B>
    served/index_loss/<class>/recall_vs_exact@K                       class: none | ~50% | ~10% | ~1% (mean over its filters)
    served/exposure/<ranking>/{coverage, gini, distinct_items}      ranking: served | exact | most_popular
    served/curves/<ranking>/recall@K                                  K = 1 .. 500 (no filter)
    figures:    served/recall_at_k, served/recall_vs_exact_per_filter, served/latency
    histograms: served/per_user_recall@K/<ranking>, served/item_exposure/<ranking>,
                served/result_popularity/<ranking> (log1p training count of each returned item)

Every number of :func:`~silverrec.train.served_eval.served_table` is one of these scalars.
"""
from typing import Any, Dict, Mapping, Optional

from silverrec.train.served_eval import WARN_BELOW, ServedDetails
from silverrec.train.tb_logging import TensorBoardLogger, scalars_layout
from silverrec.train.tensorboard_figures import filter_recall_figure, latency_figure, recall_curve_figure


def served_scalars(section: Mapping[str, Any]) -> Dict[str, float]:
    """Every number of the ``served`` section as ``{tag: value}`` (None values left out)."""
    out: Dict[str, float] = {}
    for expr, row in section["filters"].items():
        for key, value in row.items():
            if key == "tasks":
                for task, metrics in value.items():
                    out.update({f"served/{expr}/tasks/{task}/{m}": v for m, v in metrics.items() if v is not None})
            elif isinstance(value, (int, float)) and value is not None:
                out[f"served/{expr}/{key}"] = float(value)
    out.update({f"served/latency_ms/batch_{b}": ms for b, ms in section["latency_ms"].items()})
    out.update({f"served/index_loss/{c}/recall_vs_exact@{section['k']}": v
                for c, v in section.get("index_loss", {}).items()})
    for name, e in section.get("exposure", {}).items():
        out.update({f"served/exposure/{name}/{m}": float(v) for m, v in e.items()})
    curves = section.get("curves", {})
    for name, values in curves.items():
        if name != "k":
            out.update({f"served/curves/{name}/recall@{k}": v for k, v in zip(curves["k"], values)})
    return out


def log_served(logger: TensorBoardLogger, section: Mapping[str, Any], details: Optional[ServedDetails], step: int,
               hparams: Optional[Mapping[str, object]] = None) -> None:
    """Writes the section's scalars, figures and histograms at ``step``, the custom-scalars
    layout, and (with ``hparams``) an hparams session ``served`` with the headline served metrics."""
    k = section["k"]
    logger.scalars(served_scalars(section), step)
    curves = section.get("curves")
    if curves:
        logger.figure("served/recall_at_k", recall_curve_figure(
            {name: (curves["k"][: len(v)], v) for name, v in curves.items() if name != "k"},
            f"recall@K, {section['num_users']} test users, no filter"), step)
    points = [(expr, row["pass_fraction"], row[f"recall_vs_exact@{k}"]) for expr, row in section["filters"].items()]
    logger.figure("served/recall_vs_exact_per_filter", filter_recall_figure(points, k, WARN_BELOW), step)
    logger.figure("served/latency", latency_figure(section["latency_ms"], section["backend"]), step)
    if details is not None:
        for name, values in details.per_user_recall.items():
            logger.histogram(f"served/per_user_recall@{k}/{name}", values, step)
        for name, counts in details.exposure.items():
            logger.histogram(f"served/item_exposure/{name}", counts[counts > 0], step)
        for name, values in details.result_popularity.items():
            logger.histogram(f"served/result_popularity/{name}", values, step)
    logger.layout(scalars_layout())
    if hparams is not None:
        metrics: Dict[str, float] = {}
        for expr, row in section["filters"].items():
            for key in (f"recall@{k}", f"recall_vs_exact@{k}", f"value_recall@{k}"):
                if row.get(key) is not None:
                    metrics[f"served/{expr}/{key}"] = row[key]
        metrics.update({f"served/latency_ms/batch_{b}": ms for b, ms in section["latency_ms"].items()})
        if "exposure" in section:
            metrics["served/exposure/served/coverage"] = section["exposure"]["served"]["coverage"]
        logger.hparams(hparams, metrics, run_name="served")
    logger.flush()
