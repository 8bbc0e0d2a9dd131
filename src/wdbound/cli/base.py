"""What every command shares: the typer app, the consoles, one-line errors and the flag names."""

from __future__ import annotations

import json
import warnings
from typing import List

import typer
from .._version import __version__
from ..errors import WdboundError
from ..progress import console, err_console

# torch.jit's deprecation notice fires on import of torchvision; it says nothing about the user's run.
warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hessian spectra of trained networks and the AdamW / l2-Adam generalization-bound terms "
                       "of Zhou et al. (TPAMI 2024).")

def _version(value: bool) -> None:
    if value:
        console.print(f"wdbound {__version__}")
        raise typer.Exit()


# The option names of the command being run: a hint names a flag only when that command has it.
RUNNING: dict[str, set[str] | None] = {"flags": None}


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """wdbound: weight-decay generalization bounds from Hessian spectra."""
    command = ctx.command.commands.get(ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    RUNNING["flags"] = ({flag for param in command.params for flag in getattr(param, "opts", ())
                         if flag.startswith("--")} if command is not None else None)


FLAGS = {"eta": "--lr", "lam": "--wd", "b": "--batch-size", "n": "--n-train"}


def flag_of(param: str) -> str:
    """The flag that sets the library parameter ``param`` (``eta`` -> ``--lr``, ``top_k`` -> ``--top-k``).

    >>> flag_of("eta"), flag_of("sigma_floor")
    ('--lr', '--sigma-floor')
    """
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def print_error(exc: BaseException | str) -> None:
    """One line on stderr, never wrapped, never interpreted as markup, ending with the flag that fixes it when
    the library named a parameter; control characters that came in with the input (a key, a path) are shown
    escaped, so the error stays one line."""
    text = str(exc)
    flags = RUNNING["flags"]
    params = getattr(exc, "params", None) or (getattr(exc, "param", None),)
    wanted = [flag_of(p) for p in params if p]
    hints = [f for f in wanted if f not in text and (flags is None or f in flags)]
    if hints:
        text = f"{text} (pass {', '.join(hints)})"
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    err_console.print(f"error: {text}", highlight=False, soft_wrap=True, markup=False)


def say(text: str) -> None:
    """Print one plain line on stdout (no markup, no highlighting, never wrapped)."""
    console.print(text, highlight=False, soft_wrap=True, markup=False)


def deprecated_alias(old: str, old_value, new: str, new_value, default):
    """The value of a renamed flag: the new spelling's, or the old one's with a warning that says so (both given
    and different is an error)."""
    if old_value is None:
        return new_value
    if new_value != default and new_value != old_value:
        raise WdboundError(f"{old} is the old spelling of {new}; give one of them", new.lstrip("-"))
    err_console.print(f"warning: {old} is deprecated here; use {new} {old_value}")
    return old_value


def parse_kwargs(items: List[str]) -> dict:
    """``key=value`` pairs with JSON values where they parse (``depth=4``, ``cifar_stem=false``)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise WdboundError(f"--arch-kwarg {item!r} is not key=value", "arch_kwarg")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
