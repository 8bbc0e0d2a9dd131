"""cli_reference.py: docs/cli.md is what the commands define, and one flag name has one default."""

from pathlib import Path

from wdbound.cli_reference import DIFFERENT_DEFAULTS, REFERENCE_COMMANDS, reference_markdown, shared_flag_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_current():
    """Fails when a flag, default or help text changed without `python -m wdbound.cli_reference > docs/cli.md`."""
    committed = (ROOT / "docs" / "cli.md").read_text()
    assert committed == reference_markdown(), "docs/cli.md is stale: run python -m wdbound.cli_reference > docs/cli.md"


def test_one_default_per_flag_name_except_the_documented_ones():
    """Where two commands share a flag, they share its default, unless DIFFERENT_DEFAULTS says why not; and
    every documented exception is still real (no stale excuse)."""
    seen_exceptions = set()
    for flag, by_command in shared_flag_defaults().items():
        reference = next((by_command[c] for c in REFERENCE_COMMANDS if c in by_command), None)
        if reference is None:
            reference = by_command[sorted(by_command)[0]]
        for command, default in by_command.items():
            if default != reference:
                assert (flag, command) in DIFFERENT_DEFAULTS, f"{command} {flag} defaults to {default!r}, not {reference!r}"
                seen_exceptions.add((flag, command))
    assert seen_exceptions == set(DIFFERENT_DEFAULTS), set(DIFFERENT_DEFAULTS) - seen_exceptions


def test_every_option_has_help_and_every_command_a_purpose():
    text = reference_markdown()
    for line in text.splitlines():
        if line.startswith("| `--"):
            assert line.rstrip().split("|")[-2].strip(), f"an option without help: {line}"
    from wdbound.cli import app

    assert text.count("## `wdbound ") == len([c for c in app.registered_commands if not c.hidden]) == 9


def test_top_level_help_lists_whole_descriptions():
    """`wdbound --help` shows each command's short help whole (click cuts long first sentences with '...')."""
    from wdbound.cli_reference import commands

    for name, command in commands():
        assert command.short_help and len(command.short_help) <= 55 and not command.short_help.endswith("..."), name
