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


class VerifyFailed(DiffauditError):
    """``diffaudit verify`` found an artefact of the run that disagrees with what was recorded or recomputed (or whose
    digest was never recorded): the command exits with :data:`VERIFY_FAILED`, naming the first such artefact."""


#: exit status of a command whose audit exceeded --fail-above
RELEASE_BLOCKED = 3
#: exit status of ``diffaudit verify`` when an artefact disagrees with its record or with the recomputation
VERIFY_FAILED = 4
