"""The event files of a tiny training run hold the end-of-training figures, the projector
config, the custom-scalars layout and the hparams session (read back with TensorBoard's reader)."""
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from silverrec.train.tb_logging import scalars_layout

ALL = {"images": 0, "histograms": 0, "tensors": 0, "scalars": 0}


def test_training_run_writes_figures_projector_and_layout(tiny_run) -> None:
    tb = os.path.join(tiny_run["dir"], "tb")
    ea = EventAccumulator(tb, size_guidance=ALL)
    ea.Reload()
    images = set(ea.Tags()["images"])
    assert {"test/recall_at_k", "test/dot_vs_overarch"} <= images, images
    png = ea.Images("test/recall_at_k")[-1]
    assert png.encoded_image_string[:4] == b"\x89PNG" and png.width > 100
    assert "custom_scalars__config__" in ea.Tags()["tensors"]
    scalars = set(ea.Tags()["scalars"])
    assert "test/curves/exact/recall@1" in scalars and "test/curves/most_popular/recall@100" in scalars
    with open(os.path.join(tb, "projector_config.pbtxt")) as f:
        config = f.read()
    assert config.count("embeddings {") == 2 and 'tensor_name: "items' in config and 'tensor_name: "users' in config
    step = tiny_run["report"]["train"]["steps"]
    with open(os.path.join(tb, f"{step:05d}", "items", "metadata.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        first = f.readline().rstrip("\n").split("\t")
    assert header[0] == "item_id" and header[-1] == "train_count" and len(first) == len(header)
    curves = tiny_run["report"]["curves"]
    assert curves["k"][0] == 1 and len(curves["exact"]) == len(curves["k"]) == len(curves["most_popular"])


def test_layout_groups_charts_in_order() -> None:
    assert list(scalars_layout()) == ["train", "valid", "test", "served", "index"]
