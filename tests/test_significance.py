"""Paired differences and their bootstrap intervals, against cases whose bootstrap distribution is known exactly."""

import numpy as np
import pytest

from lightvessel_monai.compare.significance import bootstrap_mean_ci, paired_difference


def test_interval_over_cases_matches_the_hand_computed_distribution():
    # one seed, cases [0, 0, 3]: a resample's mean is k, with k ~ Binomial(3, 1/3) the count of the 3 drawn.
    # P(k) = 8/27, 12/27, 6/27, 1/27 for k = 0..3, so the CDF is .296, .741, .963, 1: the 2.5 % quantile is 0 and
    # the 97.5 % one is 3 (the CDF first reaches .975 at k = 3); the 95 % quantile is 2 (.963 >= .95).
    mean, low, high = bootstrap_mean_ci([0.0, 0.0, 3.0], level=0.95)
    assert mean == pytest.approx(1.0)
    assert (low, high) == (0.0, 3.0)
    assert bootstrap_mean_ci([0.0, 0.0, 3.0], level=0.90)[1:] == (0.0, 2.0)


def test_seeds_are_resampled_too():
    # two seeds, one case each: [[0], [2]]. Rows drawn: (0,0) 1/4 -> 0, mixed 1/2 -> 1, (2,2) 1/4 -> 2.
    table = [[0.0], [2.0]]
    assert bootstrap_mean_ci(table, level=0.95)[1:] == (0.0, 2.0)
    # the 30 % and 70 % quantiles both fall on the middle value (CDF .25 at 0, .75 at 1)
    assert bootstrap_mean_ci(table, level=0.40)[1:] == (1.0, 1.0)


def test_the_same_scores_give_the_same_interval():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(3, 10))
    assert bootstrap_mean_ci(table) == bootstrap_mean_ci(table)


def test_pairing_removes_the_spread_between_cases():
    # the cases differ a lot (0.3 to 0.9) but the method is 0.01 above the baseline on every one of them
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.3, 0.9, size=(3, 10))
    diff = paired_difference(baseline + 0.01, baseline)
    assert diff.mean == pytest.approx(0.01)
    assert diff.low == pytest.approx(0.01) and diff.high == pytest.approx(0.01)
    assert diff.significant
    # an unpaired interval of the method's own mean is far wider than the difference
    _, low, high = bootstrap_mean_ci(baseline + 0.01)
    assert high - low > 0.1


def test_a_difference_whose_interval_holds_zero_is_not_significant():
    diff = paired_difference([[0.70, 0.80], [0.72, 0.78]], [[0.71, 0.79], [0.71, 0.79]])
    assert diff.low < 0.0 < diff.high and not diff.significant


def test_unpaired_or_non_finite_tables_are_refused():
    with pytest.raises(ValueError, match="pair seed by seed"):
        paired_difference(np.zeros((3, 10)), np.zeros((2, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_ci([0.5], level=1.0)
