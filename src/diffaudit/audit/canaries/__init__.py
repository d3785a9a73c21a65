"""Many canaries in one training run: each candidate's count, the dose–response by duplication count, and the
one-run lower bound on ε (``epsilon.epsilon_lower_bound``)."""

from .epsilon import audit_epsilon, epsilon_lower_bound

__all__ = ["audit_epsilon", "epsilon_lower_bound"]
