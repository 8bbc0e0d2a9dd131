"""The CLI reference (docs/cli.md), generated from the commands themselves, and the vocabulary check behind it.

``python -m wdbound.cli_reference > docs/cli.md`` rewrites the reference; a test fails when the committed file
differs from what the commands say (a flag added, renamed, or given another default or help text).

:func:`shared_flag_defaults` lists every flag that several commands take with the default each gives it: one
name has one meaning, and where the meaning is the same the default is the same (the exceptions are
:data:`DIFFERENT_DEFAULTS`, each with its reason).
"""

from __future__ import annotations

from .cli.options import DIFFERENT_DEFAULTS  # noqa: E402 - the reasons live beside the options

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
