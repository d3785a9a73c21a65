"""User-facing errors.

Every problem a user can fix (bad input, a missing file, a clash with an earlier run) raises
:class:`DiffauditError` with one line that names the problem and how to fix it. The command line prints that
line and exits non-zero; library users catch it like any exception.
"""


class DiffauditError(Exception):
    """A problem with the input or the run directory that the user can fix; the message says how."""


class ReleaseBlocked(DiffauditError):
    """The audit finished and its reproduction rate exceeds the limit a release pipeline set (``--fail-above``): the
    command exits with :data:`RELEASE_BLOCKED`, distinct from bad input (2)."""


#: exit status of a command whose audit exceeded --fail-above
RELEASE_BLOCKED = 3
