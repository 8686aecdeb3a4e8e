"""The authors' protocol: best test PLCC and SRCC tracked apart (ties to the later epoch), kept
across a resume, labelled selected_on_test, and aggregated over splits by name."""

import json
import math

import pytest

from dpiqa_jax.eval import multi_split, test_selection
from dpiqa_jax.train import inputs
from dpiqa_jax.data import sources


def _metrics(plcc: float, srcc: float) -> dict[str, float]:
    return {"plcc": plcc, "srcc": srcc, "krcc": 0.0}


def test_best_plcc_and_srcc_are_kept_apart_and_ties_go_to_the_later_epoch(tmp_path):
    selection = test_selection.SelectionOnTest(tmp_path)
    assert selection.observe(10, 1.0, _metrics(0.80, 0.70)) == ["best_test_plcc",
                                                                  "best_test_srcc"]
    assert selection.observe(20, 2.0, _metrics(0.85, 0.65)) == ["best_test_plcc"]
    assert selection.observe(30, 3.0, _metrics(0.60, 0.70)) == ["best_test_srcc"]  # a tie
    assert selection.observe(40, 4.0, _metrics(math.nan, 0.50)) == []
    assert selection.reported() == {"best_test_plcc": 0.85, "best_test_srcc": 0.70}
    assert selection.best["best_test_plcc"]["step"] == 20
    assert selection.best["best_test_srcc"]["step"] == 30
    selection.write()
    document = json.loads((tmp_path / test_selection.SELECTION_FILE).read_text())
    assert document["selected_on_test"] is True and document["protocol"] == "authors"
    assert len(document["history"]) == 4


def test_a_resumed_run_continues_from_the_saved_bests(tmp_path):
    first = test_selection.SelectionOnTest(tmp_path)
    first.observe(10, 1.0, _metrics(0.9, 0.8))
    first.write()
    resumed = test_selection.SelectionOnTest(tmp_path)
    assert resumed.observe(20, 2.0, _metrics(0.85, 0.85)) == ["best_test_srcc"]
    assert resumed.reported() == {"best_test_plcc": 0.9, "best_test_srcc": 0.85}


def test_a_broken_selection_file_is_refused_naming_it(tmp_path):
    (tmp_path / test_selection.SELECTION_FILE).write_text('{"best_test_plcc": 1}')
    with pytest.raises(ValueError, match="test_selection.json"):
        test_selection.read_reported(tmp_path)
    (tmp_path / test_selection.SELECTION_FILE).write_text("not json")
    with pytest.raises(ValueError, match="not a readable"):
        test_selection.SelectionOnTest(tmp_path)


def test_run_over_splits_reports_the_authors_numbers_labelled(tmp_path):
    trained = []

    def train_fn(config, split, workdir):
        trained.append(split.split)
        selection = test_selection.SelectionOnTest(workdir)
        value = 0.9 + 0.01 * int(split.split[-1])
        selection.observe(5, 1.0, _metrics(value, value - 0.1))
        selection.write()
        return str(workdir / "best_test_plcc_model")

    def evaluate_fn(checkpoint_dir, split, out_dir):
        raise AssertionError("the authors' protocol reports the run's own test values")

    keys = ["seed0", "seed1"]
    summary = multi_split.run_over_splits(train_fn, evaluate_fn, {}, "toy", "s.json", keys,
                                          tmp_path, protocol_name="authors")
    assert summary["best_test_plcc"]["mean"] == pytest.approx(0.905)
    assert summary["best_test_srcc"]["median"] == pytest.approx(0.805)
    document = json.loads((tmp_path / multi_split.SELECTED_SUMMARY_JSON).read_text())
    assert document["selected_on_test"] is True and document["protocol"] == "authors"
    assert "Selected on the test part" in (tmp_path /
                                           multi_split.SELECTED_SUMMARY_MARKDOWN).read_text()
    assert not (tmp_path / multi_split.SUMMARY_JSON).exists()
    assert json.loads((tmp_path / "seed1" / multi_split.SELECTED_SPLIT_FILE).read_text())[
        "selected_on_test"] is True
    multi_split.run_over_splits(train_fn, evaluate_fn, {}, "toy", "s.json", keys, tmp_path,
                                protocol_name="authors")
    assert trained == keys  # finished splits are reused
    with pytest.raises(ValueError, match="protocol 'theirs'"):
        multi_split.run_over_splits(train_fn, evaluate_fn, {}, "toy", "s.json", keys, tmp_path,
                                    protocol_name="theirs")


def _source(names):
    return sources.InMemorySource([(name, name.encode(), 0.5) for name in names])


def test_the_authors_parts_join_validation_to_training():
    parts = {"train": _source(["a", "b"]), "val": _source(["c"]), "test": _source(["d"])}
    assert inputs.protocol_parts(parts, "ours") is parts
    joined = inputs.protocol_parts(parts, "authors")
    assert sorted(joined) == ["test", "train"]
    assert joined["train"].names == ("a", "b", "c") and len(joined["train"]) == 3
    assert [joined["train"][i]["name"] for i in range(3)] == ["a", "b", "c"]
    with pytest.raises(IndexError):
        joined["train"][3]  # pylint: disable=pointless-statement
    with pytest.raises(ValueError, match="config.protocol='theirs'"):
        inputs.protocol_parts(parts, "theirs")
