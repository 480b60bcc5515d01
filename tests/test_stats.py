"""The statistics over seeds against independent implementations: SciPy's bootstrap, the Mann-Whitney U
statistic, statsmodels' power calculation."""

import numpy as np
import pytest
from scipy import stats

from byol_bench.regression.stats import (bootstrap_interval, detectable_difference, difference_of_means, mean,
                                         pooled_std, probability_of_improvement, seeds_needed, t_test_power)

RNG = np.random.default_rng(7)
SEEDS = RNG.normal(62.0, 1.5, size=5)  # five seeds' accuracies, in points
OTHER = RNG.normal(63.0, 1.0, size=4)


def scipy_interval(samples, statistic) -> tuple:
    found = stats.bootstrap(samples, lambda *draws, axis: statistic(*draws), n_resamples=20000, method="percentile",
                            vectorized=True, axis=-1, rng=np.random.default_rng(1)).confidence_interval
    return found.low, found.high


@pytest.mark.parametrize("samples, statistic", [((SEEDS,), mean), ((SEEDS, OTHER), difference_of_means)])
def test_bootstrap_intervals_agree_with_scipy_within_monte_carlo_error(samples, statistic):
    ours = bootstrap_interval(list(samples), statistic)
    # 2,000 resamples: a 2.5% quantile moves by about a tenth of the samples' spread from one draw to the next.
    assert ours == pytest.approx(scipy_interval(samples, statistic), abs=0.1 * np.std(np.concatenate(samples)))
    assert ours[0] < statistic(*samples) < ours[1]


def test_one_seed_has_no_interval():
    assert bootstrap_interval([SEEDS[:1]], mean) is None
    assert bootstrap_interval([SEEDS, OTHER[:1]], difference_of_means) is None


def test_probability_of_improvement_is_the_mann_whitney_statistic_averaged_over_strata():
    a1, b1, a2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 0.5]), RNG.normal(size=4)
    b2 = np.append(RNG.normal(size=2), a2[0])  # a tie counts half
    per_stratum = [stats.mannwhitneyu(a, b).statistic / (len(a) * len(b)) for a, b in ((a1, b1), (a2, b2))]
    assert float(probability_of_improvement(a1, b1, a2, b2)) == pytest.approx(np.mean(per_stratum))
    low, high = bootstrap_interval([a1, b1, a2, b2], probability_of_improvement)
    assert 0 <= low <= np.mean(per_stratum) <= high <= 1


@pytest.mark.parametrize("std, difference", [(1.5, 1.0), (0.6, 1.0), (3.0, 2.0), (0.2, 1.0)])
def test_seeds_needed_agree_with_statsmodels(std, difference):
    from statsmodels.stats.power import TTestIndPower

    effect = difference / std
    expected = max(2, int(np.ceil(TTestIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8))))
    needed = seeds_needed(std, difference)
    assert needed == expected
    assert t_test_power(effect, needed) >= 0.8 > (t_test_power(effect, needed - 1) if needed > 2 else 0)
    assert TTestIndPower().power(effect, needed, 0.05) == pytest.approx(t_test_power(effect, needed))


def test_the_detectable_difference_is_the_inverse_of_seeds_needed():
    for seeds in (2, 3, 5, 10):
        difference = detectable_difference(1.5, seeds)
        assert seeds_needed(1.5, difference * 1.001) <= seeds < seeds_needed(1.5, difference * 0.95)
    assert detectable_difference(1.5, 1) is None


def test_pooled_std_weighs_each_setting_by_its_degrees_of_freedom():
    assert pooled_std([SEEDS, OTHER, OTHER[:1]]) == pytest.approx(
        np.sqrt((4 * SEEDS.var(ddof=1) + 3 * OTHER.var(ddof=1)) / 7))
    assert pooled_std([SEEDS[:1]]) is None
