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


# ---------------------------------------------------------------- the layers: format <- convert, format <- stream <- train

# Modules any layer may use: the package's plumbing, no data flow of its own.
PLUMBING = {"vortex_data", "vortex_data.errors", "vortex_data.temporaries", "vortex_data.pool", "vortex_data.cpus",
            "vortex_data._toml", "vortex_data.recipes"}
# layer -> the layers it may import besides itself and the plumbing. format is the on-disk contract;
# the walk from a shard to a training step stays inside stream/ and format/; convert and stream
# never meet; train never sees how shards were made.
MAY_IMPORT = {
    "format": set(),
    "convert": {"format"},
    "stream": {"format"},
    "train": {"format", "stream", "fixtures"},  # fixtures.scene: the synthetic batches of a dry run
}
# Lines per module: one concept each. The named module sits a little over and says why here.
MAX_LINES = 400
OVER_THE_LIMIT = {
    "preflight.py": 420,  # one command's checks side by side, each a short function
}


def _graph() -> dict[str, set[str]]:
    """module -> the vortex_data modules it imports (a name imported from a package resolves to its
    submodule when there is one), at top level or inside a function."""
    names = set(_modules())
    graph = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        if p.name == "__main__.py":
            continue
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out = set()
        for m in _imports(p):
            if m in names:
                out.add(m)
            elif m.rpartition(".")[0] in names:
                out.add(m.rpartition(".")[0])  # a name from a module
        out.discard(module)
        graph[module] = out
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else None


def test_each_layer_imports_only_the_layers_below_it():
    graph = _graph()
    assert {"vortex_data.format.manifest", "vortex_data.convert.shards", "vortex_data.stream.mixture",
            "vortex_data.train.loop"} <= set(graph)
    problems = []
    for module, targets in graph.items():
        layer = _layer(module)
        if layer not in MAY_IMPORT:
            continue
        allowed = MAY_IMPORT[layer] | {layer}
        for t in sorted(targets):
            if t in PLUMBING:
                continue
            if _layer(t) not in allowed:
                problems.append(f"{module} imports {t}")
    assert not problems, problems
    # the check sees a real edge of each kind it allows
    assert "vortex_data.format.tar_index" in graph["vortex_data.format.schema"]
    assert "vortex_data.format.manifest" in graph["vortex_data.stream.sample_index"]


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_module_is_over_the_line_limit():
    over = {}
    for p in PACKAGE.rglob("*.py"):
        rel = str(p.relative_to(PACKAGE))
        n = len(p.read_text().splitlines())
        if n > OVER_THE_LIMIT.get(rel, MAX_LINES):
            over[rel] = n
    assert not over, over
    assert all((PACKAGE / rel).is_file() for rel in OVER_THE_LIMIT)  # an exception names a module that exists


def test_the_mixture_does_not_import_torch():
    """A user who only plans a mixture (quotas, epoch plans) needs no torch: stream's __init__ loads
    the loader's names on first use."""
    code = ("import sys, vortex_data.stream.mixture, vortex_data.stream.batching, vortex_data.stream as s\n"
            "assert 'torch' not in sys.modules, 'torch loaded'\n"
            "s.make_loader\n"
            "assert 'torch' in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PACKAGE.parent)
    assert res.returncode == 0, res.stderr
