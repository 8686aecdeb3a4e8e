"""The demo's student BatchNorm momentum reaches the model; the shipped `tiny` config keeps the
pretrained weights' own."""

import jax
import numpy as np

from configs import student
from dpiqa_jax import demo
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.train import models


def _stem_running_mean_after_one_batch(config) -> np.ndarray:
    """The stem BatchNorm's running mean after one training-mode batch [2, 32, 32, 3], from a
    fresh init (running mean 0, the same weights for every config)."""
    module = models.build_student(config)
    images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    variables = module.init(jax.random.key(1), images, train=False)
    stem = variables["batch_stats"]["base_model"]["features_0_1"]
    assert np.all(np.asarray(stem["mean"]) == 0.0)
    _, mutated = module.apply(variables, images, train=True, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(2)})
    return np.asarray(mutated["batch_stats"]["base_model"]["features_0_1"]["mean"])


def test_the_demo_sets_the_student_batchnorm_momentum():
    tiny = student.get_config("tiny")
    settings = demo.DemoSettings()
    config = demo.student_config(tiny, settings, teacher_dir="random_tiny")
    assert models.student_config(tiny).bn_momentum is None
    assert models.student_config(config).bn_momentum == settings.student_bn_momentum
    # From a zero running mean one batch leaves momentum x the batch mean, and both runs see
    # the same batch mean: the running means differ by the ratio of the momenta. Each side is
    # one fp32 product (half an ulp, 6e-8 relative), hence rtol 1e-6.
    pretrained = efficientnet_config(tiny.student.backbone).bn_momentum
    assert settings.student_bn_momentum != pretrained
    np.testing.assert_allclose(_stem_running_mean_after_one_batch(config),
                               _stem_running_mean_after_one_batch(tiny)
                               * settings.student_bn_momentum / pretrained, rtol=1e-6)


def test_the_demo_starts_the_score_head_at_the_training_labels_mean():
    tiny = student.get_config("tiny")
    settings = demo.DemoSettings(image_size=48)
    config = demo.student_config(tiny, settings, teacher_dir="random_tiny")
    labels = [r.mos_normalized for r in demo.split_records(settings)["train"]]
    assert config.student.score_bias == np.mean(labels)
    module = models.build_student(config)
    weights = models.initial_student_weights(module, config)
    np.testing.assert_array_equal(weights.params["fc3"]["bias"], [np.float32(np.mean(labels))])
    assert "fc3 bias set to" in weights.source
    untouched = models.initial_student_weights(models.build_student(tiny), tiny)
    assert abs(float(untouched.params["fc3"]["bias"][0]) - np.mean(labels)) > 0.1
