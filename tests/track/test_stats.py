"""The local t-distribution and Welch test against published table values."""

import math

import pytest

from lmlab.track.stats import betainc, summarize, t_quantile, t_two_sided_p, welch


def test_betainc_known_values():
    assert betainc(1, 1, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-4)
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(("df", "t975"), [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantiles_match_tables(df, t975):
    assert t_quantile(0.975, df) == pytest.approx(t975, abs=1e-3)
    assert t_two_sided_p(t975, df) == pytest.approx(0.05, abs=1e-4)


def test_summary_and_welch():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.sd == 1.0 and s.ci95 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    # Welch's example: means 20.0 vs 22.0 with unequal variances.
    a, b = [19.0, 20.0, 21.0, 20.0, 20.0], [20.0, 24.0, 22.0, 21.0, 23.0]
    diff, t, p = welch(a, b)
    va, vb = 0.5 / 5, 2.5 / 5
    assert diff == 2.0 and t == pytest.approx(2.0 / math.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / 4 + vb**2 / 4)
    assert df == pytest.approx(0.36 / 0.065, abs=1e-9)
    assert 0.01 < p < 0.05 and p == pytest.approx(t_two_sided_p(t, df))
    assert welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0
