"""Fixtures shared by the serving tests: one tiny export (session-wide, it takes seconds), its
``Retriever`` and example users."""
import numpy as np
import pytest

from silverrec.retrieval.serving_graph import ServingConfig
from silverrec.serve import Retriever
from silverrec.train.checkpoint import load_checkpoint
from silverrec.train.export import example_users, export_serving, latest_history
from silverrec.train.trainer import load_two_tower


@pytest.fixture(scope="session")
def model_path(tiny_run, tiny_dataset, tmp_path_factory):
    model = load_two_tower(load_checkpoint(tiny_run["checkpoint"]))
    path = str(tmp_path_factory.mktemp("http") / "serving.pt2")
    export_serving(model, tiny_dataset, ServingConfig(k=20, candidates_per_task=30, num_clusters=12), path, {})
    return path


@pytest.fixture(scope="session")
def retriever(model_path):
    return Retriever(model_path)


@pytest.fixture(scope="session")
def users(tiny_dataset):
    rows = np.arange(16) % tiny_dataset.users.num_rows
    return example_users(tiny_dataset, rows, latest_history(tiny_dataset, rows))
