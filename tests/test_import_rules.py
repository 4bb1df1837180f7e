"""Import rules of the package: the command line sits on top and nothing imports it; importing a
part of the trainer does not load command-line wiring; library modules do not load the test
fixtures at import time. Checked in a fresh interpreter, one forked child per module."""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vortex_data"

# Imports each module in a child forked from a parent that has loaded only third-party
# libraries, and reports which vortex_data modules each import pulled in.
CHILD = r"""
import importlib, json, os, sys
import numpy, cv2, torch, pyarrow.parquet  # third-party only: preloaded so each child is quick
out = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            loaded = sorted(m for m in sys.modules if m.startswith("vortex_data"))
        except ModuleNotFoundError as e:  # an optional extra that is not installed: nothing to check
            if (e.name or "").startswith("vortex_data"):
                raise
            loaded = []
        os.write(w, json.dumps(loaded).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.waitpid(pid, 0)
    out[name] = json.loads(data)
print(json.dumps(out))
"""


def _modules() -> list[str]:
    names = []
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _loaded_by_each(names: list[str]) -> dict[str, list[str]]:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(names)], capture_output=True, text=True,
                         timeout=300, cwd=PACKAGE.parent)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_importing_the_library_loads_neither_the_cli_nor_the_fixtures():
    names = _modules()
    assert {"vortex_data.train.losses", "vortex_data.train.data", "vortex_data.demo"} <= set(names)
    loaded = _loaded_by_each(names)
    problems = []
    for name, mods in loaded.items():
        if name != "vortex_data.cli" and "vortex_data.cli" in mods:
            problems.append(f"{name} imports the CLI")
        if name.startswith("vortex_data.train") and name != "vortex_data.train.commands" \
                and "vortex_data.train.commands" in mods:
            problems.append(f"{name} imports the trainer's command-line wiring")
        if not name.startswith("vortex_data.fixtures") and any(m.startswith("vortex_data.fixtures") for m in mods):
            problems.append(f"{name} imports the test fixtures at import time")
    assert not problems, problems
    assert "vortex_data.cli" in loaded["vortex_data.cli"]  # the check sees what a module loads


def _imports(path: Path) -> set[str]:
    """Every vortex_data module a file imports, at top level or inside a function."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("vortex_data")}


def test_no_module_imports_the_cli_even_lazily():
    """The cli <-> demo cycle stays gone: the CLI is imported by nothing in the package."""
    importers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "cli.py" and "vortex_data.cli" in _imports(p)]
    assert importers == []
    assert "vortex_data.demo" in _imports(PACKAGE / "cli.py")  # the direction that stays
