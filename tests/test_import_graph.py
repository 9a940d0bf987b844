"""No import cycles among the project's own modules: the top-level scripts and modules, benchmarks/,
tests/ and the experiments/ package. Imports inside functions count too: a lazy import hides a cycle
from the interpreter, not from a reader."""

import ast
import os
from typing import Dict, List, Set

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (folder, package name or None when its files are imported by bare name through sys.path)
MODULE_FOLDERS = ((".", None), ("benchmarks", None), ("tests", None), ("experiments", "experiments"))


def project_modules(root: str) -> Dict[str, str]:
    """{module name: file} for the .py files directly in each of MODULE_FOLDERS (not below them:
    experiments/results/ holds archived one-off scripts, not modules)."""
    modules = {}
    for folder, package in MODULE_FOLDERS:
        directory = os.path.join(root, folder)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if not name.endswith(".py"):
                continue
            stem = name[:-3]
            if package is None:
                modules[stem] = os.path.join(directory, name)
            else:
                modules[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(directory, name)
    return modules


def imported_names(module: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The project modules that ``module`` imports anywhere in its file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module.rpartition(".")[0] if not path.endswith("__init__.py") else module
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from package import submodule" imports the submodule; "from module import name" the module.
            candidates = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in candidates:
            # "import experiments.study_report" also runs experiments/__init__.py: count the longest match.
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in modules:
                    found.add(".".join(parts[:end]))
                    break
    found.discard(module)
    return found


def import_graph(root: str) -> Dict[str, Set[str]]:
    modules = project_modules(root)
    return {module: imported_names(module, path, modules) for module, path in modules.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Each strongly connected component with more than one module (Tarjan), as a sorted list."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def describe(graph, component):
    members = set(component)
    return "{" + ", ".join(f"{m} -> {sorted(graph[m] & members)}" for m in component) + "}"


def test_project_has_no_import_cycles():
    graph = import_graph(REPO_ROOT)
    # The graph is real: the scanner sees the trainers' imports of sspo_utils and the experiments package.
    assert "sspo_utils" in graph["train_sspo_sd15"] and "sspo_utils" in graph["train_sspo_animatediff"]
    assert any(name.startswith("experiments.") for name in graph)
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(describe(graph, c) for c in cycles)


def test_the_scanner_finds_top_level_lazy_and_package_cycles(tmp_path):
    """The checker itself: cycles through a function-level import, through ``from package import
    module`` and through a relative import are found; a one-way import is not a cycle."""
    (tmp_path / "alpha.py").write_text("import beta\n")
    (tmp_path / "beta.py").write_text("def f():\n    from alpha import thing\n")
    (tmp_path / "gamma.py").write_text("import alpha\n")
    package = tmp_path / "experiments"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("from experiments import two\n")
    (package / "two.py").write_text("def g():\n    from .one import h\n")
    (package / "three.py").write_text("import experiments.one\nimport gamma\n")
    graph = import_graph(str(tmp_path))
    assert graph["gamma"] == {"alpha"} and graph["experiments.three"] == {"experiments.one", "gamma"}
    assert find_cycles(graph) == [["alpha", "beta"], ["experiments.one", "experiments.two"]]
