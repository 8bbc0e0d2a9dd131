"""Command-line interface: parse, call the library, render. The package is the only place that knows about the
terminal; one module per command group, the shared options in :mod:`wdbound.cli.options`."""

from __future__ import annotations

from typing import List, Optional

from ..errors import Interrupted, WdboundError
from ..progress import LogProgress, console, err_console  # noqa: F401 - LogProgress is re-exported for tests and users
from . import training, summary, spectrum, err, table, updates, check, curves  # noqa: F401 - registers the commands
from .base import app, flag_of, print_error, say  # noqa: F401


def _explain_different_defaults() -> None:
    """Where a flag's default differs from the analysis commands' on purpose, its help says why in one clause
    (the reasons are :data:`wdbound.cli.options.DIFFERENT_DEFAULTS`, the one owner). Each command gets its own
    copy of the option, so a shared option's help is not changed for the other commands."""
    import copy
    import inspect

    import typer

    from .options import DIFFERENT_DEFAULTS

    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        callback = info.callback
        defaults = list(callback.__defaults__ or ())
        params = [p for p in inspect.signature(callback).parameters.values() if p.default is not inspect.Parameter.empty]
        for i, param in enumerate(params):
            option = param.default
            if not isinstance(option, typer.models.OptionInfo):
                continue
            flag = next((d for d in option.param_decls if d.startswith("--")), "--" + param.name.replace("_", "-"))
            reason = DIFFERENT_DEFAULTS.get((flag, name))
            if reason:
                option = copy.copy(option)
                option.help = f"{option.help} (Default differs from err's here: {reason}.)"
                defaults[i] = option
        callback.__defaults__ = tuple(defaults)


_explain_different_defaults()

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
