"""The package's import graph has no cycle, and no import hides inside a function to dodge
one (the models package imports everything at module level)."""
import ast
import os
import os.path as osp
from typing import Dict, Set

ROOT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'mmslab')


def _module_name(path: str) -> str:
    rel = osp.relpath(path, osp.dirname(ROOT))[:-3].replace(os.sep, '.')
    return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ''
    base = module.split('.')
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def _graph() -> Dict[str, Set[str]]:
    """mmslab module -> the mmslab modules it imports at module level."""
    files = [osp.join(d, f) for d, _, fs in os.walk(ROOT) for f in fs if f.endswith('.py')]
    modules = {_module_name(f): f for f in files}
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(open(path).read())
        deps = set()
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, path.endswith('__init__.py'), node)
                # `from . import sub` needs the package only partly initialised: not a
                # dependency on the package's own imports
                targets = [f'{target}.{a.name}' for a in node.names] + (
                    [target] if node.module else [])
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def test_no_import_cycle():
    graph = _graph()
    state: Dict[str, int] = {}

    def visit(node: str, path: list) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith(node + '.'):
                continue  # a package importing its own submodules
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [node, dep]
                raise AssertionError(f'import cycle: {" -> ".join(cycle)}')
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_models_import_nothing_lazily():
    models = osp.join(ROOT, 'models')
    lazy = []
    for f in sorted(os.listdir(models)):
        if not f.endswith('.py'):
            continue
        tree = ast.parse(open(osp.join(models, f)).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy += [f'{f}:{n.lineno}' for n in ast.walk(node)
                         if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert lazy == []
