"""User-facing errors.

Every problem a user can fix (bad input, a missing file, a clash with an earlier run) raises
:class:`DiffauditError` with one line that names the problem and how to fix it. The command line prints that
line and exits non-zero; library users catch it like any exception.
"""


class DiffauditError(Exception):
    """A problem with the input or the run directory that the user can fix; the message says how."""
