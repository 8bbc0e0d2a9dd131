"""The package's shape: a CLI you can read (one module per command group, none over 400 lines, no command
function over 40) and data flowing one way (no import cycle between wdbound's modules)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "wdbound"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The wdbound modules ``name`` imports, at module level or inside functions (both are edges)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                target = ".".join(base + [node.module])
                found |= {target} | {f"{target}.{a.name}" for a in node.names}
            else:  # `from . import defaults`: the submodules named
                found |= {".".join(base + [a.name]) for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("wdbound")}
    return {m for m in found if m in modules and m != name}


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_cli_modules_and_commands_stay_small():
    from wdbound.cli import app

    commands = {info.callback.__name__ for info in app.registered_commands}
    for path in sorted((SRC / "cli").glob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name in commands:
                assert node.end_lineno - node.lineno + 1 <= 40, f"{path.name}: {node.name}"
    assert not (SRC / "cli.py").exists()
