"""IQA metrics against scipy and known values; undefined cases; the logistic fit; the plot."""

import warnings

import numpy as np
import pytest
import scipy.stats
from PIL import Image

from dpiqa_jax.eval import metrics, plots

RNG = np.random.default_rng(0)
PRED = RNG.normal(size=200)
MOS = 0.6 * PRED + RNG.normal(scale=0.5, size=200)


def test_correlations_match_scipy():
    assert metrics.srcc(PRED, MOS) == pytest.approx(scipy.stats.spearmanr(PRED, MOS)[0], abs=1e-12)
    assert metrics.krcc(PRED, MOS) == pytest.approx(scipy.stats.kendalltau(PRED, MOS)[0],
                                                    abs=1e-12)
    assert metrics.plcc(PRED, MOS) == pytest.approx(scipy.stats.pearsonr(PRED, MOS)[0], abs=1e-12)


def test_known_values():
    x = [1, 2, 3, 4, 5]
    assert metrics.srcc(x, [10, 20, 30, 40, 50]) == pytest.approx(1.0)
    assert metrics.srcc(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.krcc(x, [1, 3, 2, 4, 5]) == pytest.approx(0.8)  # 9 concordant, 1 discordant.
    assert metrics.plcc([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))


def test_ties_use_average_ranks_and_tau_b():
    x = [1, 2, 2, 3, 4, 4, 4, 5]
    y = [2, 1, 3, 3, 5, 4, 6, 7]
    assert metrics.srcc(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0], abs=1e-12)
    assert metrics.krcc(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="b")[0],
                                               abs=1e-12)
    # Hand check of tied ranks: x ranks [1, 2.5, 2.5, 4, 6, 6, 6, 8].
    ranks = scipy.stats.rankdata(x)
    assert ranks.tolist() == [1, 2.5, 2.5, 4, 6, 6, 6, 8]


def test_constant_predictions_give_nan_and_a_warning():
    with pytest.warns(metrics.MetricWarning, match="predictions are constant"):
        assert np.isnan(metrics.srcc([0.5] * 10, MOS[:10]))
    with pytest.warns(metrics.MetricWarning, match="MOS are constant"):
        assert np.isnan(metrics.plcc(PRED[:10], [3.0] * 10))
    with pytest.warns(metrics.MetricWarning):
        result = metrics.compute_metrics([0.5] * 10, MOS[:10])
    assert np.isnan(result["srcc"]) and np.isnan(result["krcc"]) and np.isnan(result["plcc"])
    assert np.isnan(result["plcc_logistic"]) and result["logistic_fit_ok"] == 0.0
    assert np.isfinite(result["rmse"])


def test_too_few_images():
    with pytest.warns(metrics.MetricWarning, match="at least 2"):
        assert np.isnan(metrics.krcc([1.0], [2.0]))


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        metrics.plcc([1, np.nan, 3], [1, 2, 3])


def test_logistic_fit_recovers_a_known_curve():
    x = np.linspace(-3, 3, 300)
    truth = (4.0, 1.0, 0.5, 0.7)
    y = metrics.logistic_4(x, *truth) + RNG.normal(scale=0.01, size=x.size)
    params = metrics.fit_logistic(x, y)
    np.testing.assert_allclose(params[:3], truth[:3], atol=0.05)
    assert abs(params[3]) == pytest.approx(truth[3], abs=0.05)


def test_logistic_plcc_beats_raw_plcc_on_a_saturating_relation():
    x = np.linspace(0, 10, 200)
    y = 1 / (1 + np.exp(-(x - 5))) + RNG.normal(scale=0.02, size=x.size)
    result = metrics.compute_metrics(x, y)
    assert result["logistic_fit_ok"] == 1.0
    assert result["plcc_logistic"] > result["plcc"] + 0.02
    assert result["plcc_logistic"] > 0.99
    assert result["rmse_logistic"] < 0.03
    assert result["num_images"] == 200
    assert set(metrics.METRIC_NAMES) <= set(result)


def test_logistic_fit_failure_falls_back_to_raw_with_a_warning():
    with pytest.warns(metrics.MetricWarning, match="using raw predictions"):
        result, params = metrics.compute_metrics_and_fit([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert params is None and result["logistic_fit_ok"] == 0.0
    assert result["plcc_logistic"] == result["plcc"]
    assert result["rmse_logistic"] == result["rmse"]


def test_no_warnings_on_well_defined_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.compute_metrics(PRED, MOS)


def test_logistic_is_stable_far_from_its_centre():
    values = metrics.logistic_4(np.array([-1e6, 1e6]), 5.0, 1.0, 0.0, 1e-3)
    np.testing.assert_allclose(values, [1.0, 5.0])


def test_scatter_plot_writes_a_png(tmp_path):
    result, params = metrics.compute_metrics_and_fit(PRED, MOS)
    path = tmp_path / "scatter.png"
    plots.scatter_plot(PRED, MOS, result, params, path, title="test set")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert "srcc" in plots._metrics_text(result)
    assert "logistic fit failed" in plots._metrics_text({**result, "logistic_fit_ok": 0.0})
