"""Power-law fits L(C) = E + A C^-alpha: exact recovery, bootstrap coverage, and crossings against closed forms."""

import math

import numpy as np
import pytest

from lmlab.track.scaling import Fit, PowerLaw, crossing, first_crossing, fit_power_law, fit_with_bootstrap

COMPUTE = np.geomspace(1e9, 1e13, 6)


def test_a_noiseless_ladder_gives_back_its_law():
    law = PowerLaw(1.7, 40.0, 0.15)
    fitted, rmse = fit_power_law(COMPUTE, law(COMPUTE))
    assert rmse < 1e-9
    assert math.isclose(fitted.E, 1.7, rel_tol=1e-5) and math.isclose(fitted.alpha, 0.15, rel_tol=1e-5)
    assert math.isclose(fitted.A, 40.0, rel_tol=1e-4)


def test_bootstrap_refits_resample_each_rungs_seeds():
    law = PowerLaw(1.5, 30.0, 0.2)
    rng = np.random.default_rng(0)
    rungs = {c: list(law(c) + rng.normal(0, 0.003, size=3)) for c in COMPUTE}
    fit = fit_with_bootstrap(rungs, samples=200)
    low, high = fit.interval("alpha")
    assert low < fit.law.alpha < high and low < 0.2 < high and high - low < 0.1
    loss, lo, hi = fit.predict(1e14)
    assert lo <= loss <= hi and abs(loss - law(1e14)) < 3 * 0.003  # ten times past the ladder, within 3 sd
    same = fit_with_bootstrap({c: [float(law(c))] * 2 for c in COMPUTE}, samples=20)  # seeds that agree
    assert all(b == same.boot[0] for b in same.boot) and same.interval("E")[0] == same.interval("E")[1]


def test_too_few_computes_are_refused():
    with pytest.raises(ValueError, match="3 or more computes"):
        fit_power_law(np.array([1e9, 1e9, 1e10]), np.array([3.0, 3.1, 2.5]))


def test_crossing_of_two_laws_with_one_exponent_is_the_closed_form():
    # E1 + A1 C^-a = E2 + A2 C^-a  <=>  C = ((A1 - A2) / (E2 - E1))^(1/a)
    a, b = PowerLaw(2.0, 50.0, 0.2), PowerLaw(2.1, 40.0, 0.2)
    expected = (10.0 / 0.1) ** (1 / 0.2)
    assert math.isclose(first_crossing(a, b, 1e5, 1e15), expected, rel_tol=1e-9)
    assert first_crossing(a, b, 1e5, expected / 2) is None  # not in the range searched
    fits = Fit(a, 0.0, [a, a]), Fit(b, 0.0, [b, PowerLaw(2.1, 60.0, 0.2)])  # one refit pair never crosses
    found = crossing(*fits, 1e5, 1e15)
    assert math.isclose(found.at, expected, rel_tol=1e-9) and found.share == 0.5
    assert all(math.isclose(x, expected, rel_tol=1e-9) for x in found.interval)
