"""Paired differences between methods and their bootstrap confidence intervals.

A comparison trains every method with the same seeds and scores every run on the same validation cases, so the
score of a run is a ``(seeds, cases)`` table. The difference between a method and the baseline is paired on both
axes: ``d[s, c] = score_method[s, c] - score_baseline[s, c]``. Its uncertainty has two sources, the seeds (how
training happened to go) and the cases (which images happened to be in the validation split). The two-level
bootstrap below resamples both, independently and with replacement, and takes the percentile interval of the
resampled mean of ``d``. With one seed it is the ordinary bootstrap over cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "bootstrap_mean_ci", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean paired difference ``method - baseline`` and its confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    level: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0.0 or self.high < 0.0


def _as_table(values: np.ndarray | list, name: str) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.ndim == 1:  # one seed
        table = table[None, :]
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, cases) table, got shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError(f"{name} holds non-finite scores; leave such cases out before bootstrapping")
    return table


def bootstrap_mean_ci(
    values: np.ndarray | list, level: float = 0.95, resamples: int = 20000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): percentile interval of the mean of a ``(seeds, cases)`` table, both axes resampled.

    Each resample draws ``seeds`` rows and ``cases`` columns with replacement (independently), and its statistic
    is the mean of the selected sub-table. ``low`` and ``high`` are the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled means (``inverted_cdf``: an attained value, no interpolation). A 1-D input is one
    seed. The generator is seeded, so the same scores always give the same interval.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    table = _as_table(values, "values")
    n_seeds, n_cases = table.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    cols = rng.integers(0, n_cases, size=(resamples, n_cases))
    # mean of table[rows][:, cols] = (1 / (S C)) sum_i sum_j table[r_i, c_j], computed without the (S, C) copies
    counts_rows = np.zeros((resamples, n_seeds))
    np.add.at(counts_rows, (np.arange(resamples)[:, None], rows), 1.0)
    counts_cols = np.zeros((resamples, n_cases))
    np.add.at(counts_cols, (np.arange(resamples)[:, None], cols), 1.0)
    means = np.einsum("bs,sc,bc->b", counts_rows, table, counts_cols) / (n_seeds * n_cases)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], method="inverted_cdf")
    return float(table.mean()), float(low), float(high)


def paired_difference(
    method: np.ndarray | list,
    baseline: np.ndarray | list,
    level: float = 0.95,
    resamples: int = 20000,
    seed: int = 0,
) -> PairedDifference:
    """Paired difference ``method - baseline`` of two ``(seeds, cases)`` score tables, with its bootstrap interval.

    Row ``s`` of both tables must be the same seed and column ``c`` the same validation case.
    """
    a, b = _as_table(method, "method scores"), _as_table(baseline, "baseline scores")
    if a.shape != b.shape:
        raise ValueError(
            f"method and baseline scores must pair seed by seed and case by case, got shapes {a.shape} and {b.shape}"
        )
    mean, low, high = bootstrap_mean_ci(a - b, level=level, resamples=resamples, seed=seed)
    return PairedDifference(mean=mean, low=low, high=high, level=level)
