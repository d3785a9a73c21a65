"""The audit: its pure statistics (``stats``: the binomial test and intervals; ``tprime``: Algorithm 1 and the bound
of Eq. 9; ``likelihood``: the exact NLL), the stages that read and write a run directory (``count``,
``tprime_stage``, ``quality``, ``utility``, ``report``), the table of stages (``stages``), the engine that runs
them resumably (``pipeline``), the dry run (``plan``), and the sweeps (``sweep``)."""

from .stats import clopper_pearson, reproduction_test

__all__ = ["clopper_pearson", "reproduction_test"]
