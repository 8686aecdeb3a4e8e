"""The evaluation protocol with fake predict_fns: scoring, outputs, aggregation over splits,
the split driver, cross-dataset tables and the evaluate launcher."""

import csv
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dpiqa_jax.data import images, sources, splits
from dpiqa_jax.eval import aggregate, metrics, multi_split, protocol
from dpiqa_jax.eval import rows as rows_lib

import iqa_layouts

REPO = Path(__file__).resolve().parents[1]
TINY = images.ImageConfig(height=8, width=8)


def brightness(batch: np.ndarray) -> np.ndarray:
    """A fake model: mean pixel value, [B, H, W, 3] -> [B]."""
    return batch.mean(axis=(1, 2, 3))


def bright_source(count: int) -> sources.InMemorySource:
    # encoded_image(i) gets brighter with i, and so does the label.
    return sources.InMemorySource([(f"img{i}.png", iqa_layouts.encoded_image(i, fmt="PNG"),
                                    i / count) for i in range(count)])


def test_evaluate_scores_each_image_once_in_source_order():
    source = bright_source(11)
    calls = []

    def predict(batch):
        calls.append(batch.shape)
        return brightness(batch)

    result = protocol.evaluate(predict, source, TINY, batch_size=4, progress=False)
    assert calls == [(4, 8, 8, 3)] * 3
    assert result.predictions.names == source.names
    np.testing.assert_allclose(result.predictions.mos, [i / 11 for i in range(11)], rtol=1e-6)
    expected = [brightness(images.preprocess(source[i]["image"], TINY)[None])[0]
                for i in range(11)]
    np.testing.assert_allclose(result.predictions.predictions, expected, rtol=1e-6)
    assert result.metrics["srcc"] == pytest.approx(1.0)
    assert result.metrics["num_images"] == 11


def test_predict_fn_with_a_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\).*expected scores \[B\]"):
        protocol.evaluate(lambda b: brightness(b)[:, None], bright_source(5), TINY, 4,
                          progress=False)


def test_assemble_predictions_rejects_double_or_missing_scores():
    columns = {"index": np.array([0, 1, 1, -1]), "score": np.zeros(4), "mos": np.zeros(4),
               "mask": np.array([1, 1, 1, 0], bool)}
    with pytest.raises(ValueError, match=r"exactly once.*\('b', 2\)"):
        protocol.assemble_predictions(columns, ["a", "b", "c"])


def test_assemble_predictions_orders_gathered_shares():
    # Two processes' shares, concatenated as process_allgather(tiled=True) would.
    columns = {"index": np.array([2, -1, 0, 1]), "score": np.array([0.3, 9.0, 0.1, 0.2]),
               "mos": np.array([3.0, 0.0, 1.0, 2.0]), "mask": np.array([1, 0, 1, 1], bool)}
    predictions = protocol.assemble_predictions(columns, ["a", "b", "c"])
    np.testing.assert_array_equal(predictions.predictions, [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(predictions.mos, [1.0, 2.0, 3.0])


def test_write_evaluation_outputs(tmp_path):
    result = protocol.evaluate(brightness, bright_source(8), TINY, 3, progress=False)
    paths = protocol.write_evaluation(result, tmp_path / "out", title="t",
                                      extra_info={"dataset": "toy"})
    document = json.loads(paths["metrics"].read_text())
    assert document["dataset"] == "toy"
    assert document["metrics"]["srcc"] == pytest.approx(result.metrics["srcc"])
    assert protocol.read_metrics(tmp_path / "out") == document["metrics"]
    with open(paths["predictions"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(rows_lib.LABELLED_COLUMNS)
    assert [r["path"] for r in rows] == [f"img{i}.png" for i in range(8)]
    assert float(rows[3]["raw"]) == pytest.approx(result.predictions.predictions[3], rel=1e-5)
    assert float(rows[3]["mos"]) == pytest.approx(result.predictions.mos[3], rel=1e-5)
    assert paths["scatter"].read_bytes()[:4] == b"\x89PNG"


def test_aggregate_median_mean_std():
    per_split = {f"seed{i}": {"srcc": v, "plcc": 2 * v} for i, v in enumerate([0.9, 0.8, 0.7])}
    summary = aggregate.aggregate_metrics(per_split, ["srcc", "plcc"])
    assert summary["srcc"] == {"median": pytest.approx(0.8), "mean": pytest.approx(0.8),
                               "std": pytest.approx(0.1), "n": 3}
    assert summary["plcc"]["median"] == pytest.approx(1.6)
    table = aggregate.summary_markdown(summary, "toy")
    assert "| srcc | 0.8000 | 0.8000 ± 0.1000 | 3 |" in table


def test_aggregate_leaves_out_nan_and_says_so():
    per_split = {"a": {"srcc": 0.5}, "b": {"srcc": math.nan}, "c": {"srcc": 0.7}}
    summary = aggregate.aggregate_metrics(per_split, ["srcc"])
    assert summary["srcc"]["n"] == 2 and summary["srcc"]["mean"] == pytest.approx(0.6)
    with pytest.raises(KeyError, match="'plcc' missing from the results of split"):
        aggregate.aggregate_metrics(per_split, ["plcc"])


def test_run_over_splits_with_injected_training(tmp_path):
    trained, evaluated = [], []

    def train_fn(config, split, workdir):
        trained.append((config["lr"], split.split, workdir.name))
        return f"ckpt-{split.split}"

    def evaluate_fn(checkpoint_dir, split, out_dir):
        evaluated.append(checkpoint_dir)
        value = 0.8 + 0.01 * int(split.split[-1])
        result = protocol.EvalResult(
            metrics={name: value for name in metrics.METRIC_NAMES} | {"num_images": 5.0},
            predictions=protocol.Predictions(("a",), np.zeros(1), np.zeros(1)),
            logistic_params=None)
        protocol.write_evaluation(result, out_dir)
        return result.metrics

    keys = ["seed0", "seed1", "seed2"]
    summary = multi_split.run_over_splits(train_fn, evaluate_fn, {"lr": 1e-5}, "toy",
                                          "splits/toy/random.json", keys, tmp_path)
    assert trained == [(1e-5, k, k) for k in keys]
    assert evaluated == [f"ckpt-{k}" for k in keys]
    assert summary["srcc"]["median"] == pytest.approx(0.81)
    written = json.loads((tmp_path / multi_split.SUMMARY_JSON).read_text())
    assert written["per_split"]["seed2"]["srcc"] == pytest.approx(0.82)
    assert "| seed1 |" in (tmp_path / multi_split.SUMMARY_MARKDOWN).read_text()
    # A rerun reuses finished splits: nothing is trained again.
    multi_split.run_over_splits(train_fn, evaluate_fn, {"lr": 1e-5}, "toy",
                                "splits/toy/random.json", keys, tmp_path)
    assert len(trained) == 3


def test_make_test_evaluator_scores_the_test_part(tmp_path):
    _, layout = iqa_layouts.build_mini("koniq10k", tmp_path)
    names = sorted(layout.expected)
    split_file = splits.write_split_file(
        tmp_path / "split.json", "koniq10k", names,
        {"k": splits.Split(train=tuple(names[:1]), val=(), test=tuple(names[1:]))}, {}, {})
    loaded = []

    def load_predict_fn(checkpoint_dir):
        loaded.append(checkpoint_dir)
        return brightness

    evaluate_fn = multi_split.make_test_evaluator(tmp_path / "data", load_predict_fn, TINY, 2,
                                                  config_name="mini")
    split = multi_split.SplitRef("koniq10k", str(split_file), "k")
    with pytest.warns(metrics.MetricWarning, match="logistic fit: needs >= 5 images"):
        result = evaluate_fn("ckpt", split, tmp_path / "test")
    assert loaded == ["ckpt"]
    assert result["num_images"] == 3 and result["srcc"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["split"] == "k"


def test_default_train_fn_names_the_missing_training_module():
    try:
        train_fn = multi_split.default_train_fn()
    except ImportError as e:
        assert "dpiqa_jax.train.run.train_and_evaluate" in str(e)
    else:
        assert callable(train_fn)


def test_cross_dataset_table(tmp_path):
    test_sets = {"set_a": bright_source(6), "set_b": bright_source(4)}
    with pytest.warns(metrics.MetricWarning, match="got 4"):  # set_b: too small for the fit.
        results = protocol.evaluate_cross_dataset(brightness, test_sets, TINY, 4,
                                                  out_dir=tmp_path, progress=False)
    assert list(results) == ["set_a", "set_b"]
    assert (tmp_path / "set_b" / "scatter.png").is_file()
    table = aggregate.cross_dataset_markdown(results)
    assert "| test set | srcc | plcc_logistic | plcc | krcc | images |" in table
    assert "| set_a | 1.0000 |" in table and "| 4 |" in table


def test_evaluate_launcher_with_a_stand_in_scorer(tmp_path):
    _, layout = iqa_layouts.build_mini("flive", tmp_path)
    script = textwrap.dedent(f"""
        import sys, types
        sys.path.insert(0, {str(REPO)!r})
        stand_in = types.ModuleType("dpiqa_jax.scorer")
        def load_predict_fn(checkpoint):
            def predict(x):
                return x.mean(axis=(1, 2, 3))
            predict.input_size, predict.mos_scale = 8, 100.0
            return predict
        stand_in.load_predict_fn = load_predict_fn
        sys.modules["dpiqa_jax.scorer"] = stand_in
        from absl import app
        from launch import evaluate
        app.run(evaluate.main, argv=["evaluate", "--checkpoint_dir=ckpt",
                                     "--dataset=flive", "--config_name=mini", "--part=all",
                                     "--data_dir={tmp_path / 'data'}", "--image_size=8",
                                     "--out_dir={tmp_path / 'eval'}"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    document = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert document["metrics"]["num_images"] == len(layout.expected)
    assert document["checkpoint_dir"] == "ckpt" and document["part"] == "all"
