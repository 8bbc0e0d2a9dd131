"""The CLI reference (docs/cli.md), generated from the commands themselves, and the vocabulary check behind it.

``python -m wdbound.cli_reference > docs/cli.md`` rewrites the reference; a test fails when the committed file
differs from what the commands say (a flag added, renamed, or given another default or help text).

:func:`shared_flag_defaults` lists every flag that several commands take with the default each gives it: one
name has one meaning, and where the meaning is the same the default is the same (the exceptions are
:data:`DIFFERENT_DEFAULTS`, each with its reason).
"""

from __future__ import annotations

# Flags whose default differs from the analysis commands' (err's, else table's, else train's) on purpose:
# (flag, command) -> why. Everything else that two commands share has one default.
_TRAINS = "it trains a model, so it needs a value; err and table only override what a checkpoint records"
DIFFERENT_DEFAULTS = {
    ("--arch", "train"): _TRAINS, ("--arch", "scale-freeness"): _TRAINS,
    ("--batch-size", "train"): _TRAINS, ("--batch-size", "scale-freeness"): _TRAINS,
    ("--lr", "train"): _TRAINS, ("--lr", "scale-freeness"): _TRAINS,
    ("--wd", "train"): _TRAINS, ("--wd", "scale-freeness"): _TRAINS + " (AdamW's 0.05 for the paired runs)",
    ("--data", "train"): _TRAINS, ("--data", "scale-freeness"): _TRAINS,
    ("--epochs", "train"): _TRAINS, ("--epochs", "scale-freeness"): _TRAINS + " (short paired runs)",
    ("--optimizer", "train"): "the training rule to train with",
    ("--optimizer", "table"): "each checkpoint records its rule; the flag only fills plain state_dicts",
    ("--eps", "scale-freeness"): "Adam's epsilon values to compare (a comma list)",
    ("--out", "train"): "required: the checkpoint to write",
    ("--exact", "spectrum"): "spectrum is the estimator (off); err and table use the dense Hessian where it is "
                             "cheap (auto)",
    ("--probes", "spectrum"): "spectrum's single pass: 2-5 probes by d for the density, top-k and trace; err and "
                              "table spend on one long run for the bound integrals",
    ("--steps", "spectrum"): "as --probes: 40 steps per probe, stopped early by the accuracy targets",
    ("--dtype", "spectrum"): "float32 HVPs for the density and top-k; the bounds' small eigenvalues need float64",
    ("--diag-probes", "spectrum"): "no extra probes (0); err adds up to 16 when Q's diagonal is estimated (auto)",
    ("--probes", "check"): "a baseline is recorded with 4 short runs so CI checks the whole zoo in minutes",
    ("--steps", "check"): "as --probes",
}
REFERENCE_COMMANDS = ("err", "table", "train")


def _command_group():
    """The click group typer builds from the app (typer ships its own click: no ``import click`` here)."""
    import typer

    from .cli import app

    return typer.main.get_command(app)


def _context(command, name: str):
    """A click context of ``command`` from the same click implementation as the command."""
    return type(command).context_class(command, info_name=name)


def _format_default(param) -> str:
    default = param.default
    if param.param_type_name == "option" and param.is_flag:
        return "on" if default else "off"
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(map(str, default))
    return str(default)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def commands() -> list[tuple[str, object]]:
    """``(name, click command)`` of every wdbound command, in the order ``wdbound --help`` lists them."""
    group = _command_group()
    ctx = _context(group, "wdbound")
    return [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]


def flags(command) -> dict[str, object]:
    """The options of a command by their first long spelling (``--probes``); hidden ones (an old spelling kept
    for old scripts, which says so when used) are not part of the vocabulary."""
    out = {}
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            name = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            out[name] = param
    return out


def shared_flag_defaults() -> dict[str, dict[str, str]]:
    """``{flag: {command: default}}`` for every flag that two or more commands take."""
    seen: dict[str, dict[str, str]] = {}
    for name, command in commands():
        for flag, option in flags(command).items():
            seen.setdefault(flag, {})[name] = _format_default(option)
    return {flag: by for flag, by in sorted(seen.items()) if len(by) > 1}


def reference_markdown() -> str:
    """docs/cli.md: per command its one-line purpose, usage, arguments and every option with its default and
    help text, exactly as the command defines them."""
    lines = ["# wdbound CLI reference", "",
             "Generated from the commands by `python -m wdbound.cli_reference > docs/cli.md`; a test fails when this",
             "file and the commands disagree. Every command also takes `--help`.", ""]
    for name, command in commands():
        ctx = _context(command, f"wdbound {name}")
        lines += [f"## `wdbound {name}`", "", _cell(command.help or ""), "", "```", " ".join(
            command.collect_usage_pieces(ctx)).join((f"wdbound {name} ", "")), "```", ""]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if arguments:
            lines += ["| argument | meaning |", "|---|---|"]
            lines += [f"| `{p.name.upper()}` | {_cell(getattr(p, 'help', '') or '')} |" for p in arguments]
            lines.append("")
        lines += ["| option | default | meaning |", "|---|---|---|"]
        for option in (p for p in command.params if p.param_type_name == "option"):
            spelled = ", ".join(f"`{o}`" for o in option.opts + option.secondary_opts)
            lines.append(f"| {spelled} | {_cell(_format_default(option))} | {_cell(option.help or '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
