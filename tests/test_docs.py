"""The README and docs/ speak of the tool as it is: no project history, every `wdbound` command they show
exists with the flags it is given, and the README's quickstart prints what the README says it prints."""

import re
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HISTORY = re.compile(r"\b(issues? \d+|sessions? \d+|this session|earlier sessions?|previous session)\b", re.I)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?")


def test_docs_speak_of_the_tool_not_its_history():
    found = [f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for path in DOCS
             for i, line in enumerate(path.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not found, found


def shown_commands(text: str) -> list[list[str]]:
    """Every `wdbound ...` command line of the code blocks (with its continuation lines), as words."""
    commands, blocks = [], re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    for block in blocks:
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip().removeprefix("$ ")
            if line.startswith("wdbound "):
                while line.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line[:-1] + " " + lines[i].strip()
                commands.append(line.split("#")[0].split())
            i += 1
    return commands


def test_every_command_the_docs_show_exists_with_its_flags():
    from wdbound.cli_reference import commands, flags

    known = dict(commands())
    checked = 0
    for path in DOCS:
        for words in shown_commands(path.read_text()):
            name = words[1]
            if name.startswith("-"):
                continue  # `wdbound --version`
            assert name in known, f"{path.name}: unknown command {' '.join(words)}"
            # A hidden option is an old spelling kept for old scripts: the docs use the current one.
            options = {flag for flag, param in flags(known[name]).items() if not param.hidden} | {"--help"}
            for word in words[2:]:
                flag = word.split("=")[0]
                if flag.startswith("--"):
                    assert flag in options or flag.startswith("--no-") and "--" + flag[5:] in options, \
                        f"{path.name}: {name} has no {flag} ({' '.join(words)})"
            checked += 1
    assert checked >= 20


def _skeleton(line: str) -> tuple[str, list[float]]:
    line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<when>", line.strip())
    line = re.sub(r"[\d.]+ s\b", "<t> s", line)  # timings vary with the machine
    return NUMBER.sub("#", line), [float(n) for n in NUMBER.findall(line)]


def _shown(block: str, output: str) -> None:
    """Every line the README shows is a line of the output (numbers to 1e-3, timings free, '...' a prefix)."""
    printed = [_skeleton(line) for line in output.splitlines() if line.strip()]
    for line in block.splitlines()[1:]:
        prefix = line.endswith("...")
        text, numbers = _skeleton(line[:-3] if prefix else line)
        matches = [nums for skel, nums in printed if (skel.startswith(text) if prefix else skel == text)]
        assert any(len(nums) >= len(numbers) and all(abs(a - b) <= 1e-3 * max(abs(a), abs(b)) + 1e-9
                                                     for a, b in zip(numbers, nums)) for nums in matches), line


@pytest.mark.slow
def test_readme_quickstart_prints_what_it_shows(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```text\n(\$ wdbound .*?)```", (ROOT / "README.md").read_text(), re.S)
    assert [b.splitlines()[0] for b in blocks[:2]] == [
        "$ wdbound spectrum checkpoints/digits-mlp-adamw-e40.pt", "$ wdbound err --optimizer adamw"]
    for block in blocks[:2]:
        code, out, err = run_cli(block.splitlines()[0].removeprefix("$ wdbound ").split(), capsys)
        assert code == 0, err
        assert "warning" not in err
        _shown(block, out + "\n" + err)
