"""Command-line interface: parse, call the library, render. The package is the only place that knows about the
terminal; one module per command group, the shared options in :mod:`wdbound.cli.options`."""

from __future__ import annotations

from typing import List, Optional

from ..errors import Interrupted, WdboundError
from ..progress import LogProgress, console, err_console  # noqa: F401 - LogProgress is re-exported for tests and users
from . import training, summary, spectrum, err, table, updates, check  # noqa: F401 - registers the commands
from .base import app, flag_of, print_error, say  # noqa: F401

def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI. Bad input is one line on stderr and exit code 2 (SystemExit). Under torchrun with several
    processes, rank 0 alone prints and writes (see :mod:`wdbound.distributed`)."""
    from ..distributed import finish, init_from_env, is_main

    previous = _raise_on_signals()
    try:
        init_from_env()
        if not is_main():
            console.quiet = err_console.quiet = True
        app(args=argv, prog_name="wdbound")
    except WdboundError as exc:
        print_error(exc)
        raise SystemExit(2) from None
    except Exception as exc:  # noqa: BLE001 - an allocation failure outside a planned phase is one line too
        from ..memory import OutOfMemory, is_allocation_failure

        if not is_allocation_failure(exc):
            raise
        print_error(OutOfMemory("running wdbound", None))
        raise SystemExit(2) from None
    except Interrupted as exc:
        err_console.print(f"interrupted by signal {exc.signum}: finished results are kept (cache, table rows), "
                          "unfinished outputs were not written", highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(exc.code) from None
    finally:
        finish()
        _restore_signals(previous)


def _raise_on_signals() -> dict:
    """SIGINT and SIGTERM raise :class:`Interrupted` (exit 130 / 143) instead of click's generic abort;
    returns the handlers they replace."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame):
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict) -> None:
    import signal

    for sig, handler in previous.items():
        signal.signal(sig, handler)
