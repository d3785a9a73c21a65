"""The audit, grouped by what a reader looks for: ``engine`` (the stage table, resumable runs, the dry run, sweeps,
the integrity check), ``count`` (the count and what it means: tests, intervals, the sequential design, the verdict),
``tprime`` (Algorithm 1 and its stage), ``quality`` (NLL, FID, utility) and ``report`` (the report, its plots,
comparisons, the privacy section). ``results`` is the run's results.json, read and written by all of them."""

from .count.stats import clopper_pearson, reproduction_test

__all__ = ["clopper_pearson", "reproduction_test"]
