"""Standard errors and significance pruning of the tcBF shift fit (ptyframe_direct._shift_stats)
on linear problems with known noise."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_direct._shift_stats import prune_by_significance, robust_scale, standard_errors


def test_standard_errors_match_the_spread_of_repeated_fits() -> None:
    rng = np.random.default_rng(0)
    design = rng.normal(size=(200, 3)) * np.array([1.0, 10.0, 0.1])
    truth = np.array([1.0, -0.5, 3.0])
    sigma = 0.2
    fits, errors = [], []
    for _ in range(300):
        y = design @ truth + rng.normal(scale=sigma, size=200)
        x, *_ = np.linalg.lstsq(design, y, rcond=None)
        fits.append(x)
        errors.append(standard_errors(design, design @ x - y))
    spread = np.std(fits, axis=0)
    np.testing.assert_allclose(np.mean(errors, axis=0), spread, rtol=0.15)
    # analytic: sigma sqrt(diag((A^T A)^-1))
    np.testing.assert_allclose(np.mean(errors, axis=0),
                               sigma * np.sqrt(np.diag(np.linalg.inv(design.T @ design))),
                               rtol=0.1)


def test_robust_scale_ignores_a_few_outliers_and_an_undetermined_parameter_is_inf() -> None:
    rng = np.random.default_rng(1)
    r = rng.normal(scale=0.3, size=1000)
    r[:10] = 50.0
    assert robust_scale(r, 2) == pytest.approx(0.3, rel=0.1)
    design = np.stack([np.ones(50), np.zeros(50)], axis=1)
    errors = standard_errors(design, rng.normal(size=50))
    assert np.isfinite(errors[0]) and errors[1] == np.inf


def test_pruning_drops_the_noise_term_and_keeps_the_real_ones() -> None:
    rng = np.random.default_rng(2)
    columns = {"a": rng.normal(size=300), "b": rng.normal(size=300), "c": rng.normal(size=300)}
    y = 2.0 * columns["a"] + 0.5 * columns["b"] + rng.normal(scale=0.1, size=300)

    def fit(names):
        design = np.stack([columns[n] for n in names], axis=1)
        x, *_ = np.linalg.lstsq(design, y, rcond=None)
        return names, design, x

    def assess(result):
        names, design, x = result
        return x, standard_errors(design, design @ x - y), np.ones(len(x))

    (names, _, x), kept, record = prune_by_significance(("a", "b", "c"), fit, assess,
                                                        lambda n: n != "a", 3.0)
    assert kept == ("a", "b") and names == kept
    assert record["c"]["t"] < 3.0 and record["b"]["t"] > 3.0
    np.testing.assert_allclose(x, [2.0, 0.5], atol=0.03)
    # an effect ratio below 1 prunes a term however significant it is
    _, kept, _ = prune_by_significance(
        ("a", "b"), fit, lambda r: (*assess(r)[:2], np.array([1.0, 0.5])[:len(r[0])]),
        lambda n: n != "a", 3.0)
    assert kept == ("a",)
    # threshold 0 keeps everything
    assert prune_by_significance(("a", "b", "c"), fit, assess, lambda n: True, 0.0)[1] == (
        "a", "b", "c")
