"""The package's layering: imports go downward only, with no cycle, and retrieval stays light.

Layers (docs/architecture.md), lowest first; a module may import its own layer's units (without a
cycle between units) and any lower layer, never a higher one, and never from inside a function.
"""
import ast
import os
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dns_jax"

LAYERS = [
    # formats and building blocks
    {"validation", "fileio", "compile_cache", "config_files", "pth", "checkpoint", "layers", "similarity",
     "losses", "native"},
    {"models"},                 # networks and their registry
    {"pretrained"},             # the official API over weights files
    {"features", "augmentation"},   # video -> frames -> regions (and the S2VS frame augmentations)
    {"datasets"},               # feature stores, generated collections
    {"retrieval", "localization"},
    {"index"},
    {"distributed"},            # the same pipeline on Ray (optional dependency, imported lazily)
    {"evaluation"},
    {"training"},
    {"app", "service"},
    {"commands"},
    {"cli", "convert"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path):
    """(imported dns_jax module, line, inside a function) for every import statement of the file."""
    tree = ast.parse(path.read_text())
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from dns_jax import x` imports the unit x
            targets = [f"{mod}.{a.name}" if mod == "dns_jax" else mod for a in node.names]
        for t in targets:
            if t == "dns_jax" or t.startswith("dns_jax."):
                yield t, node.lineno, id(node) in in_function


def _graph():
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _unit(_module_name(path))
        for target, line, _ in _imports(path):
            dst = _unit(target)
            if dst and dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(ROOT)}:{line}")
    return edges


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {""}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS here and in docs/architecture.md"


def test_imports_go_downward_only():
    upward = [f"{a} -> {b} ({', '.join(where[:3])})" for (a, b), where in _graph().items()
              if a in RANK and b in RANK and RANK[b] > RANK[a]]
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_cycle_between_units():
    edges = {}
    for (a, b) in _graph():
        edges.setdefault(a, set()).add(b)
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        for v in edges.get(u, ()):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]) if v in stack else f"{u} -> {v}")
            elif not state.get(v):
                visit(v, stack + [v])
        state[u] = 2

    for u in list(edges):
        if not state.get(u):
            visit(u, [u])
    assert not cycles, "import cycles between subpackages: " + "; ".join(cycles)


def test_no_dns_jax_import_inside_a_function():
    inside = [f"{p.relative_to(ROOT)}:{line} imports {t}" for p in sorted(PACKAGE.rglob("*.py"))
              for t, line, in_fn in _imports(p) if in_fn]
    assert not inside, "imports inside functions hide the real dependencies:\n" + "\n".join(inside)


def test_recipes_import_nothing_from_the_package():
    for path in sorted((ROOT / "configs").glob("*.py")):
        assert not list(_imports(path)), f"{path.name}: a recipe is data; it must not import dns_jax"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The tests above can fail: a fake package with a cycle and an upward import is caught."""
    pkg = tmp_path / "dns_jax"
    for sub, body in {"retrieval": "from dns_jax.training import x\n", "training": "from dns_jax import retrieval\n",
                      "index": "def f():\n    from dns_jax.retrieval import y\n"}.items():
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text(body)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="retrieval -> training"):
        test_imports_go_downward_only()
    with pytest.raises(AssertionError, match="cycles"):
        test_no_cycle_between_units()
    with pytest.raises(AssertionError, match="index/__init__.py:2"):
        test_no_dns_jax_import_inside_a_function()


def test_retrieval_and_index_imports_stay_light():
    code = ("import sys, dns_jax.retrieval, dns_jax.index\n"
            "heavy = ('grain', 'optax', 'orbax', 'clu', 'tensorflow_datasets', 'tensorflow', 'torch')\n"
            "print(sorted({m for m in sys.modules if m.split('.')[0] in heavy or m.startswith('dns_jax.training')}))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"a retrieval-only program loads {out.stdout.strip()}"


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {_module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    assert found | {"dns_jax.configs"} == listed, "pyproject's packages list differs from dns_jax/"
