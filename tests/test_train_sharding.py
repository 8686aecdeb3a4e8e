"""Mesh specs and the FSDP placement rules (the placement on real meshes is checked on 8 fake
devices in test_train_multidevice.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dpiqa_jax.train import sharding


def test_mesh_spec_is_parsed():
    assert sharding.parse_mesh_spec("data=-1,fsdp=2") == {"data": -1, "fsdp": 2}
    assert sharding.parse_mesh_spec(" fsdp=4 , data=2") == {"fsdp": 4, "data": 2}


@pytest.mark.parametrize("spec,message", [
    ("data=2", "does not size the axes"),
    ("data=2,model=2", "axis in"),
    ("data=-1,fsdp=-1", "only one axis"),
    ("data=2,data=2,fsdp=1", "given twice"),
    ("data=x,fsdp=1", "not an integer"),
    ("data=0,fsdp=1", "positive or -1"),
])
def test_bad_mesh_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        sharding.parse_mesh_spec(spec)


def test_mesh_shape_fills_in_the_minus_one_axis():
    assert sharding.resolve_mesh_shape("data=-1,fsdp=2", 8) == (4, 2)
    assert sharding.resolve_mesh_shape("data=2,fsdp=-1", 8) == (2, 4)
    assert sharding.resolve_mesh_shape("data=2,fsdp=4", 8) == (2, 4)
    with pytest.raises(ValueError, match="needs 6 devices, 8 are available"):
        sharding.resolve_mesh_shape("data=3,fsdp=2", 8)
    with pytest.raises(ValueError, match="does not divide"):
        sharding.resolve_mesh_shape("data=-1,fsdp=3", 8)


def test_large_kernel_is_split_on_its_largest_divisible_dimension():
    # SD's 3x3 conv 1280 -> 1280: split over output channels (largest, last on ties).
    assert sharding.fsdp_partition_spec((3, 3, 1280, 1280), 4) == P(None, None, None, "fsdp")
    # fc1 of the QFD [32768, 512]: the input dimension is the largest.
    assert sharding.fsdp_partition_spec((32768, 512), 4) == P("fsdp", None)
    # The largest dimension (1485 prompts) is not divisible: the next one is split.
    assert sharding.fsdp_partition_spec((1485, 768), 4, min_size=1) == P(None, "fsdp")


def test_small_or_indivisible_tensors_are_replicated():
    assert sharding.fsdp_partition_spec((1280,), 4) == P()  # below min_size
    assert sharding.fsdp_partition_spec((), 4) == P()
    assert sharding.fsdp_partition_spec((1023, 1023), 4) == P()  # nothing divisible by 4
    assert sharding.fsdp_partition_spec((3, 3, 1280, 1280), 1) == P()  # no fsdp axis


def test_shardings_follow_the_rule_per_leaf():
    mesh = sharding.make_mesh("data=-1,fsdp=1")
    tree = {"kernel": jax.ShapeDtypeStruct((64, 64), np.float32), "step": np.zeros((), np.int32)}
    shardings = sharding.fsdp_shardings(tree, mesh, min_size=16)
    assert shardings["kernel"].spec == P() and shardings["step"].spec == P()
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
