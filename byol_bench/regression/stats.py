"""Statistics over seeds: bootstrap confidence intervals, the probability of improvement, and how many seeds a
difference needs. The report and ``compare`` both take their numbers from here.

The intervals follow Agarwal et al. (NeurIPS 2021, "Deep RL at the edge of the statistical precipice", the
``rliable`` library): percentile intervals from a bootstrap over runs, each sample (a setting's seeds, one side
of a comparison, one stratum) resampled on its own.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
ALPHA, POWER = 0.05, 0.8  # the seeds-needed calculation's two-sided level and power
MIN_EFFECT_POINTS = 1.0  # the smallest accuracy difference, in points, that counts (--acc-tol's default)
NO_INTERVAL = "1 seed: no interval"


def bootstrap_interval(samples: list, statistic, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple | None:
    """The 95% percentile interval of ``statistic(*samples)``, every sample resampled with replacement on its own
    (a stratified bootstrap); ``statistic`` reduces the last axis. None when a sample has fewer than two values."""
    samples = [np.asarray(sample, dtype=float) for sample in samples]
    if any(len(sample) < 2 for sample in samples):
        return None
    rng = np.random.default_rng(seed)
    draws = [sample[rng.integers(0, len(sample), size=(resamples, len(sample)))] for sample in samples]
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(statistic(*draws), [tail, 1 - tail])
    return float(low), float(high)


def mean(values) -> np.ndarray:
    return np.mean(values, axis=-1)


def difference_of_means(first, second) -> np.ndarray:
    return np.mean(second, axis=-1) - np.mean(first, axis=-1)


def ratio_of_means(first, second) -> np.ndarray:
    return np.mean(second, axis=-1) / np.mean(first, axis=-1)


def probability_of_improvement(*samples) -> np.ndarray:
    """P(A > B): the chance that a run of A beats a run of B (ties count half), averaged over strata; ``samples``
    alternate A's and B's runs of each stratum (A1, B1, A2, B2, ...). rliable's probability of improvement, and
    per stratum the Mann-Whitney U statistic over n_A·n_B."""
    per_stratum = []
    for a, b in zip(samples[::2], samples[1::2]):
        difference = np.asarray(a)[..., :, None] - np.asarray(b)[..., None, :]
        per_stratum.append((difference > 0).mean(axis=(-2, -1)) + 0.5 * (difference == 0).mean(axis=(-2, -1)))
    return np.mean(per_stratum, axis=0)


def pooled_std(samples: list) -> float | None:
    """The seed-to-seed standard deviation pooled over settings (each with its own mean); None without a setting
    of two or more seeds."""
    samples = [np.asarray(sample, dtype=float) for sample in samples if len(sample) >= 2]
    degrees = sum(len(sample) - 1 for sample in samples)
    if not degrees:
        return None
    return float(np.sqrt(sum((len(sample) - 1) * sample.var(ddof=1) for sample in samples) / degrees))


def t_test_power(effect_size: float, seeds: int) -> float:
    """The power of a two-sided two-sample t-test at level ALPHA with ``seeds`` runs a side, for a difference of
    ``effect_size`` standard deviations (the noncentral t distribution)."""
    degrees = 2 * seeds - 2
    critical = stats.t.ppf(1 - ALPHA / 2, degrees)
    shift = effect_size * np.sqrt(seeds / 2)
    wrong_sign = np.nan_to_num(stats.nct.cdf(-critical, degrees, shift))  # SciPy gives NaN where it underflows
    return float(stats.nct.sf(critical, degrees, shift) + wrong_sign)


def seeds_needed(std: float, difference: float, most: int = 1000) -> int | None:
    """Seeds per setting for a two-sample t-test (level ALPHA, power POWER) to detect ``difference`` given the
    seed-to-seed ``std``; None when more than ``most`` would be needed."""
    if std == 0:
        return 2
    for seeds in range(2, most + 1):
        if t_test_power(difference / std, seeds) >= POWER:
            return seeds
    return None


def detectable_difference(std: float, seeds: int) -> float | None:
    """The smallest difference that ``seeds`` runs a side detect with power POWER at level ALPHA; None below two."""
    if seeds < 2:
        return None
    if std == 0:
        return 0.0
    # Two seeds a side need about 4 standard deviations; the noncentral t turns to NaN far beyond 20.
    return std * optimize.brentq(lambda effect: t_test_power(effect, seeds) - POWER, 1e-6, 20.0)


def estimate(values, scale: float = 1.0, decimals: int = 1) -> str:
    """A setting's seeds as a table cell: 'mean [low, high]' (the 95% bootstrap interval), the one value when there
    is one seed, '—' when there is none."""
    values = np.asarray(values, dtype=float) * scale
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "—"
    return with_interval(values.mean(), bootstrap_interval([values], mean), decimals)


def with_interval(point: float, interval: tuple | None, decimals: int = 1, sign: str = "") -> str:
    """'point [low, high]', or the point alone without an interval; ``sign`` '+' signs a difference."""
    text = f"{point:{sign}.{decimals}f}"
    return text if interval is None else f"{text} [{interval[0]:{sign}.{decimals}f}, {interval[1]:{sign}.{decimals}f}]"
