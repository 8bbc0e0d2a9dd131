"""The one exception type the library raises for bad input.

The CLI turns a :class:`WdboundError` into a one-line message and exit code 2;
anything else escaping the library is a bug.
"""

from __future__ import annotations


class WdboundError(Exception):
    """Bad input or an impossible request, explained in one line.

    Parameters
    ----------
    message:
        What is wrong, phrased for the user.
    flag:
        The command-line flag that fixes it, if there is one (e.g. ``--lr``).
    """

    def __init__(self, message: str, flag: str | None = None) -> None:
        self.flag = flag
        self.reason = message  # the message without the flag hint
        if flag and flag not in message:
            message = f"{message} (pass {flag})"
        super().__init__(message)


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived: unwind (atomic writes clean up, finished cache entries stay) and exit
    with ``code`` (130 or 143, the shell's 128 + signal). A BaseException, like KeyboardInterrupt, so no
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.code = 128 + signum
