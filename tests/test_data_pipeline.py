"""Data sources (TFDS split parts, in-memory) and the Grain pipelines: determinism, resumption,
per-process sharding, padded evaluation, global arrays."""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from dpiqa_jax.data import images, pipeline, sources, splits

import iqa_layouts

REPO = Path(__file__).resolve().parents[1]
TINY = images.ImageConfig(height=8, width=8)


def memory_source(count: int = 10) -> sources.InMemorySource:
    return sources.InMemorySource([(f"img{i:02d}.png", iqa_layouts.encoded_image(i, fmt="PNG"),
                                    i / count) for i in range(count)])


def labels_of(batches) -> list[list[float]]:
    """The labels of the real (unmasked) images of each batch."""
    return [[round(float(x), 4) for x, real in zip(b["mos_normalized"], b["mask"]) if real]
            for b in batches]


def config(**overrides) -> pipeline.PipelineConfig:
    fields = {"batch_size": 3, "image": TINY, "num_epochs": 2, "num_threads": 2, **overrides}
    return pipeline.PipelineConfig(**fields)


# Sources.

def test_in_memory_source_records():
    source = memory_source(3)
    assert len(source) == 3 and source.names == ("img00.png", "img01.png", "img02.png")
    record = source[1]
    assert record["name"] == "img01.png" and record["mos_normalized"] == pytest.approx(1 / 3)
    assert record["image"][:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unique"):
        sources.InMemorySource([("a", b"", 0.0), ("a", b"", 1.0)])


@pytest.fixture(scope="module")
def built_kadid(tmp_path_factory):
    """A miniature KADID build and a split file over it (grouped by reference)."""
    tmp_path = tmp_path_factory.mktemp("kadid")
    _, layout = iqa_layouts.build_mini("kadid10k", tmp_path)
    names = sorted(layout.expected)
    groups = {name: layout.expected[name][1]["reference_name"] for name in names}
    split_file = splits.write_random_split_file(
        tmp_path / "split.json", "kadid10k", names, groups, "test", num_splits=2,
        test_fraction=0.5, val_fraction=0.0)
    return tmp_path / "data", split_file, layout


def test_open_source_reads_one_part_of_a_split(built_kadid):
    data_dir, split_file, layout = built_kadid
    split = splits.load_split(split_file, "seed1")
    for part in ("train", "test"):
        source = sources.open_source("kadid10k", data_dir, split_file, "seed1", part,
                                     config_name="mini")
        assert source.names == split.part(part)
        for i, name in enumerate(source.names):
            record = source[i]
            assert record["name"] == name
            assert record["mos_normalized"] == pytest.approx((layout.expected[name][0] - 1) / 4)
    everything = sources.open_source("kadid10k", data_dir, part="all", config_name="mini")
    assert everything.names == tuple(sorted(layout.expected))


def test_open_source_validates_its_arguments(built_kadid):
    data_dir, split_file, _ = built_kadid
    with pytest.raises(ValueError, match="part must be one of"):
        sources.open_source("kadid10k", data_dir, split_file, "seed0", "training", "mini")
    with pytest.raises(ValueError, match="needs split_file and split"):
        sources.open_source("kadid10k", data_dir, part="test", config_name="mini")
    with pytest.raises(KeyError, match="no split 'seed7'"):
        sources.open_source("kadid10k", data_dir, split_file, "seed7", "test", "mini")


def test_split_names_absent_from_the_build_fail_unless_allowed(built_kadid, tmp_path):
    data_dir, _, layout = built_kadid
    names = sorted(layout.expected) + ["I09_01_01.png"]
    split = splits.Split(train=tuple(names[:-3]), val=(), test=tuple(names[-3:]))
    split_file = splits.write_split_file(tmp_path / "s.json", "kadid10k", names,
                                         {"only": split}, {}, {})
    with pytest.raises(KeyError, match=r"1 image\(s\) of the split are not in the built dataset"):
        sources.open_source("kadid10k", data_dir, split_file, "only", "test", "mini")
    source = sources.open_source("kadid10k", data_dir, split_file, "only", "test", "mini",
                                 allow_missing=True)
    assert source.names == tuple(names[-3:-1])


# Training pipeline.

def test_training_order_is_a_function_of_the_seed():
    source = memory_source()
    first = labels_of(pipeline.train_dataset(source, config(seed=3)))
    again = labels_of(pipeline.train_dataset(source, config(seed=3)))
    other = labels_of(pipeline.train_dataset(source, config(seed=4)))
    assert first == again
    assert first != other
    assert len(first) == 2 * 4  # Two epochs of ceil(10 / 3) batches.


def test_each_epoch_is_a_different_permutation_of_all_images():
    source = memory_source()
    flat = sum(labels_of(pipeline.train_dataset(source, config(batch_size=5))), [])
    epoch0, epoch1 = flat[:10], flat[10:]
    expected = sorted(round(i / 10, 4) for i in range(10))
    assert sorted(epoch0) == sorted(epoch1) == expected
    assert epoch0 != epoch1


def test_resumed_iterator_sees_the_same_batches():
    source = memory_source()
    cfg = config(augment=pipeline.AugmentConfig(hflip=True))
    iterator = pipeline.train_iterator(source, cfg)
    for _ in range(2):
        next(iterator)
    state = iterator.get_state()
    rest = list(iterator)
    resumed = list(pipeline.train_iterator(source, cfg, state=state))
    assert len(rest) == len(resumed) == 6
    for a, b in zip(rest, resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mos_normalized"], b["mos_normalized"])


def test_processes_get_disjoint_equal_shares():
    source = memory_source(11)
    batches = [list(pipeline.train_dataset(source, config(batch_size=2), p, 2)) for p in range(2)]
    # 11 images -> 3 global batches of 4 per epoch (one padding image), two epochs.
    assert len(batches[0]) == len(batches[1]) == 6
    single = list(pipeline.train_dataset(source, config(batch_size=4)))
    for step, whole in enumerate(single):
        for field in ("mos_normalized", "mask"):
            interleaved = np.stack([batches[0][step][field], batches[1][step][field]], 1)
            np.testing.assert_array_equal(interleaved.ravel(), whole[field])
    real = sum(labels_of(batches[0]) + labels_of(batches[1]), [])
    assert sorted(real) == sorted(2 * [round(i / 11, 4) for i in range(11)])


@pytest.mark.parametrize("count, batch_size, processes", [(10, 3, 1), (3, 4, 2), (8, 4, 1)])
def test_an_epoch_keeps_its_last_partial_batch_masked(count, batch_size, processes):
    """ceil(N / global batch) batches per epoch; every image once, padding masked and zero."""
    per_process = [list(pipeline.train_dataset(memory_source(count),
                                               config(batch_size=batch_size, num_epochs=1), p,
                                               processes))
                   for p in range(processes)]
    steps = pipeline.steps_per_epoch(count, batch_size * processes)
    assert steps == -(-count // (batch_size * processes))
    assert all(len(batches) == steps for batches in per_process)
    real = sorted(sum((sum(labels_of(b), []) for b in per_process), []))
    assert real == sorted(round(i / count, 4) for i in range(count))
    for batches in per_process:
        for batch in batches:
            assert not np.any(batch["image"][~batch["mask"]])
    padding = sum(int(np.sum(~b["mask"])) for batches in per_process for b in batches)
    assert padding == steps * batch_size * processes - count


def test_infinite_training_stream_keeps_going():
    iterator = iter(pipeline.train_dataset(memory_source(4), config(num_epochs=None)))
    batches = [next(iterator) for _ in range(7)]  # 21 images from a 4-image source.
    assert all(b["image"].shape == (3, 8, 8, 3) for b in batches)


def test_hflip_flips_exactly_and_only_when_enabled():
    source = memory_source(6)
    plain = list(pipeline.train_dataset(source, config(batch_size=6, num_epochs=1)))[0]
    flipped = list(pipeline.train_dataset(
        source, config(batch_size=6, num_epochs=1,
                       augment=pipeline.AugmentConfig(hflip=True))))[0]
    np.testing.assert_array_equal(plain["mos_normalized"], flipped["mos_normalized"])
    flips = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p)
             for f, p in zip(flipped["image"], plain["image"])]
    same = [np.array_equal(f, p) for f, p in zip(flipped["image"], plain["image"])]
    assert all(a or b for a, b in zip(flips, same)) and any(flips) and any(same)


def test_random_crop_moves_the_window():
    wide = sources.InMemorySource([("wide.png", iqa_layouts.encoded_image(3, size=(64, 8),
                                                                          fmt="PNG"), 0.5)])
    image = images.ImageConfig(height=8, width=8, resize_mode="keep_aspect_crop")
    cfg = config(batch_size=1, num_epochs=6, image=image,
                 augment=pipeline.AugmentConfig(random_crop=True))
    crops = {b["image"].tobytes() for b in pipeline.train_dataset(wide, cfg)}
    assert len(crops) > 1
    with pytest.raises(ValueError, match="random_crop needs"):
        config(augment=pipeline.AugmentConfig(random_crop=True))


def test_decoded_batches_hold_model_inputs():
    source = memory_source(3)
    batch = next(iter(pipeline.train_dataset(source, config(num_epochs=1))))
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (3, 8, 8, 3)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    expected = images.preprocess(source[0]["image"], TINY)
    assert any(np.array_equal(expected, image) for image in batch["image"])


# Evaluation pipeline.

@pytest.mark.parametrize("count,batch_size,process_count", [(10, 4, 1), (10, 4, 2), (3, 4, 3),
                                                           (8, 4, 2)])
def test_eval_counts_every_image_exactly_once(count, batch_size, process_count):
    source = memory_source(count)
    seen, batches_per_process = [], set()
    for p in range(process_count):
        batches = list(pipeline.eval_dataset(source, batch_size, TINY, p, process_count,
                                             num_threads=2))
        batches_per_process.add(len(batches))
        for batch in batches:
            assert batch["image"].shape == (batch_size, 8, 8, 3)
            assert np.all((batch["index"] >= 0) == batch["mask"])
            seen.extend(batch["index"][batch["mask"]].tolist())
            padded = ~batch["mask"]
            assert np.all(batch["image"][padded] == 0)
    assert sorted(seen) == list(range(count))
    assert len(batches_per_process) == 1  # Every process runs the same number of steps.


def test_padded_length():
    assert pipeline.padded_length(10, 4, 1) == 12
    assert pipeline.padded_length(10, 4, 2) == 16
    assert pipeline.padded_length(0, 4, 2) == 8


def test_process_index_is_checked():
    with pytest.raises(ValueError, match="process_index"):
        pipeline.eval_dataset(memory_source(2), 2, TINY, process_index=2, process_count=2)


# Global arrays.

def test_global_batch_on_a_single_device_mesh():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    batch = {"image": np.ones((4, 2, 2, 3), np.float32), "mask": np.array([1, 1, 0, 1], bool)}
    global_batch = pipeline.make_global_batch(batch, mesh)
    assert global_batch["image"].shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(np.asarray(global_batch["mask"]), batch["mask"])


def test_global_batch_is_sharded_over_the_batch_axes():
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import jax, numpy as np
        from dpiqa_jax.data import pipeline
        mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
        local = {{"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}}
        out = pipeline.make_global_batch(local, mesh, "data")["image"]
        assert out.shape == (8, 3)
        assert {{s.data.shape for s in out.addressable_shards}} == {{(4, 3)}}
        np.testing.assert_array_equal(np.asarray(out), local["image"])
        both = pipeline.make_global_batch(local, mesh, ("data", "model"))["image"]
        assert {{s.data.shape for s in both.addressable_shards}} == {{(2, 3)}}
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "OK"


def test_measure_throughput_counts_images():
    batches = [{"image": np.zeros((4, 1))} for _ in range(5)]
    result = pipeline.measure_throughput(batches, num_batches=3, warmup_batches=1)
    assert result["images"] == 12 and result["images_per_s"] > 0
