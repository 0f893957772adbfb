"""Imports run one way: refimpl <- nets <- experiments <- benchmarks, with no cycle.

The import graph is read from the source with ``ast`` (every ``import`` and
``from ... import``, also those inside functions), so a lazy import cannot
hide an upward or circular dependency.  Inside nets, ``autodiff`` imports
nothing from nets and ``ops``/``losses``/``mappings`` import only
``autodiff`` and private helper modules (``nets._*``).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"refimpl": 0, "nets": 1, "experiments": 2, "benchmarks": 3}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    """{module name: path} for every module of the four packages."""
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _resolve(node, module, is_package, known):
    """The project modules that one import statement loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module
        # ``from pkg import sub`` loads pkg.sub when it is a module, else pkg itself
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix
                 for a in node.names]
    return {name for name in names if name in known}


def import_graph():
    known = _modules()
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _resolve(node, module, is_package, known)
        graph[module] = edges - {module}
    return graph


def _cycles(graph):
    """Every strongly connected component with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


GRAPH = import_graph()


def test_the_graph_is_read():
    assert "nets.autodiff" in GRAPH["nets.ops"]
    assert "refimpl.sparsemax" in GRAPH["refimpl.topk"]
    assert len(GRAPH) > 40


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    layer = LAYERS[module.split(".")[0]]
    upward = sorted(m for m in GRAPH[module] if LAYERS[m.split(".")[0]] > layer)
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_nets_core_imports():
    nets_deps = {m: {d for d in deps if d.startswith("nets")} for m, deps in GRAPH.items()
                 if m.startswith("nets")}
    assert nets_deps["nets.autodiff"] == set()
    allowed = {"nets.autodiff"}
    for core in ("nets.ops", "nets.losses", "nets.mappings", "nets._helpers"):
        extra = {d for d in nets_deps[core]
                 if d not in allowed and not d.split(".")[-1].startswith("_")}
        assert not extra, f"{core} imports {sorted(extra)}; only nets.autodiff and nets._* allowed"


def test_operator_methods_attached_in_one_place():
    """Only nets/__init__.py assigns attributes onto Tensor."""
    assigners = []
    for module, path in _modules().items():
        if not module.startswith("nets"):
            continue
        text = path.read_text(encoding="utf-8")
        if "setattr(Tensor" in text or "Tensor.__" in text:
            assigners.append(module)
    assert assigners == ["nets"]
    import nets
    x = nets.Tensor([1.0, 2.0], requires_grad=True)
    ((x * 2 - 1) @ x).backward()
    assert x.grad.tolist() == [3.0, 7.0]
