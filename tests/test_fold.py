"""BatchNorm folding (dpiqa_jax.models.fold) and the scorer's use of it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import inference
from dpiqa_jax.models import fold
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.models.student import Student, StudentConfig

SIDE = 64
CONFIG = StudentConfig(backbone="b0", map_size=8, hidden=16)
LITE = dataclasses.replace(CONFIG, backbone="lite0")


def _variables(config: StudentConfig, seed: int):
    """Random variables (kernels N(0, 1 / fan_in)) with BatchNorm statistics and affine terms far
    from the identity; numpy, not the modules' initialisers, which take long to compile."""
    module = Student(config)
    abstract = jax.eval_shape(lambda key: module.init(key, jnp.zeros((1, SIDE, SIDE, 3)),
                                                      train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(leaf.shape[:-1])
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name in ("scale", "var"):  # only BatchNorms have these in the student
            return rng.uniform(0.3, 3.0, leaf.shape).astype(np.float32)
        return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)  # means and biases

    return module, jax.tree_util.tree_map_with_path(fill, abstract)


def _outputs(apply, variables, images):
    score, quality_map = apply(variables, images)
    return np.asarray(score), np.asarray(quality_map)


def _rounding_bound(variables) -> float:
    """Relative error (to the largest output) folding may cause, from the house rule
    fp32 eps x reduction length x steps: every layer's dot product of length K (prod of its
    kernel's leading axes) can move by K roundings relative to its terms, and every layer of the
    model lies on the path to the outputs, so the lengths of all kernels add up."""
    lengths = [int(np.prod(leaf.shape[:-1]))
               for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
               if path[-1].key == "kernel"]
    return float(np.finfo(np.float32).eps) * sum(lengths)


def _max_relative_error(ours, reference) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("config", [CONFIG, LITE], ids=["b0", "lite0"])
def test_folded_student_scores_as_the_unfolded_one(config):
    module, variables = _variables(config, seed=1)
    images = np.random.default_rng(2).uniform(0, 1, (2, SIDE, SIDE, 3)).astype(np.float32)
    folded = fold.fold_batch_norms(variables, efficientnet_config(config.backbone).bn_eps)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))  # one compilation for both
    score, quality_map = _outputs(apply, variables, images)
    folded_score, folded_map = _outputs(apply, folded, images)
    bound = _rounding_bound(variables)  # about 3e-3 here; the errors measured are ~1e-5
    assert bound < 0.05  # the check means something only if the bound is small
    assert _max_relative_error(folded_map, quality_map) <= bound
    assert _max_relative_error(folded_score, score) <= bound


def test_folding_leaves_identity_batch_norms_and_the_input_untouched():
    _, variables = _variables(CONFIG, seed=3)
    before = jax.tree.map(np.copy, variables)
    eps = efficientnet_config("b0").bn_eps
    folded = fold.fold_batch_norms(variables, eps)
    jax.tree.map(np.testing.assert_array_equal, variables, before)
    stem = folded["params"]["base_model"]["features_0_1"]
    stats = folded["batch_stats"]["base_model"]["features_0_1"]
    assert np.all(stem["scale"] == 1) and np.all(stats["mean"] == 0)
    assert np.all(stats["var"] + np.float32(eps) == np.float32(1))
    # Layers without BatchNorm (the head) keep their values bit for bit.
    np.testing.assert_array_equal(folded["params"]["fc1"]["kernel"],
                                  variables["params"]["fc1"]["kernel"])
    assert jax.tree.structure(folded) == jax.tree.structure(variables)


def test_folding_refuses_a_batch_norm_without_its_convolution():
    _, variables = _variables(CONFIG, seed=4)
    del variables["params"]["base_model"]["features_0_0"]
    with pytest.raises(ValueError, match="features_0_1: a BatchNorm without a convolution"):
        fold.fold_batch_norms(variables, 1e-5)
    with pytest.raises(ValueError, match="no batch_stats"):
        fold.fold_batch_norms({"params": variables["params"]}, 1e-5)


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_identity_variance_makes_var_plus_eps_exactly_one(eps):
    var = fold.identity_variance(eps)
    assert var + np.float32(eps) == np.float32(1.0)


def test_students_score_with_folded_variables():
    _, variables = _variables(CONFIG, seed=5)
    student = bundle_lib.Bundle("student", dataclasses.asdict(CONFIG), variables,
                                metadata={"mos_scale": 100.0, "image_size": SIDE})
    used = inference.inference_variables(student)
    assert np.all(used["params"]["base_model"]["features_0_1"]["scale"] == 1)
    assert not np.all(variables["params"]["base_model"]["features_0_1"]["scale"] == 1)
