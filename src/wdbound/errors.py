"""The one exception type the library raises for bad input.

The CLI turns a :class:`WdboundError` into a one-line message and exit code 2;
anything else escaping the library is a bug.
"""

from __future__ import annotations

import math


class WdboundError(Exception):
    """Bad input or an impossible request, explained in one line.

    The library names the *parameter* at fault (``eta``, ``probes``, ``exact``); the CLI turns it into the
    flag that sets it (``--lr``, ``--probes``, ``--exact``: :func:`wdbound.cli.flag_of`).

    Parameters
    ----------
    message:
        What is wrong, phrased for the user.
    param:
        The library's name of the parameter that fixes it, if there is one (e.g. ``eta``).
    params:
        All the parameters that fix it, when several do (e.g. every missing training fact); default ``(param,)``.

    >>> exc = WdboundError("eta = 0 must be > 0", "eta")
    >>> str(exc), exc.param
    ('eta = 0 must be > 0', 'eta')
    """

    def __init__(self, message: str, param: str | None = None, params: tuple[str, ...] = ()) -> None:
        self.param = param
        self.params = tuple(params) or ((param,) if param else ())
        self.reason = message
        super().__init__(message)


SEED_MAX = 2**32 - 1  # seeds are integers in [0, SEED_MAX]: NumPy's range; torch's streams add small offsets


def check_seed(value: int, name: str = "seed", param: str = "seed") -> None:
    """Raise a one-line :class:`WdboundError` unless ``value`` is an integer in ``[0, SEED_MAX]``.

    >>> check_seed(7)
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: seed = -1 must be an integer in [0, 4294967295]
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise WdboundError(f"{name} = {value} must be an integer in [0, {SEED_MAX}]", param)


def check_fraction(value: float, name: str, param: str, zero_means: str) -> None:
    """Raise a one-line :class:`WdboundError` unless ``value`` is a finite number in ``[0, 1)`` (a relative
    tolerance; ``zero_means`` says what 0 does).

    >>> check_fraction(0.1, "trace rtol", "rtol", "0: one block of probes")
    >>> check_fraction(1.5, "trace rtol", "rtol", "0: one block of probes")
    Traceback (most recent call last):
    ...
    wdbound.errors.WdboundError: trace rtol = 1.5 must lie in [0, 1) (0: one block of probes)
    """
    if not (0 <= value < 1) or not math.isfinite(value):
        raise WdboundError(f"{name} = {value:g} must lie in [0, 1) ({zero_means})", param)


def about(label: str, error: WdboundError) -> WdboundError:
    """``error`` as said about ``label`` (a checkpoint of a batch): prefixed with it, unless the message already
    starts with it.

    >>> str(about("a.pt", WdboundError("corrupt"))), str(about("a.pt", WdboundError("a.pt is a plain state_dict")))
    ('a.pt: corrupt', 'a.pt is a plain state_dict')
    """
    text = str(error)
    if text.startswith((f"{label}:", f"{label} ")):
        return error
    return WdboundError(f"{label}: {text}", error.param, error.params)


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived: unwind (atomic writes clean up, finished cache entries stay) and exit
    with ``code`` (130 or 143, the shell's 128 + signal). A BaseException, like KeyboardInterrupt, so no
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.code = 128 + signum
