"""The core stands without compat: no core module imports ``compat`` or ``bridge`` (issue 12 §2)."""

import ast
import pathlib
import subprocess
import sys

import pytest

import funcprune

PACKAGE = pathlib.Path(funcprune.__file__).parent
CORE = ["_amount", "select", "_select", "_norms", "_backend", "_masking", "_layout", "_pytree", "methods", "tree", "call", "patterns",
        "distributions", "schedules", "saliency", "dst", "stacking", "multi", "train", "export",
        "_dtensor", "_sharded", "_radix", "distributed"]
UPPER = {"compat", "bridge"}


def _imported(path: pathlib.Path) -> set:
    """Every funcprune module a file imports, at the top or inside functions, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative, from inside the package
                base = "funcprune" + ("." + node.module if node.module else "")
            elif node.module and node.module.split(".")[0] == "funcprune":
                base = node.module
            else:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            found.update(arg.value for arg in node.args if isinstance(arg, ast.Constant))
    return {name for name in found if name.split(".")[0] == "funcprune"}


@pytest.mark.parametrize("name", CORE)
def test_core_module_imports_neither_compat_nor_bridge(name):
    path = PACKAGE / f"{name}.py"
    assert path.exists(), f"core module {name} is missing: update CORE"
    bad = sorted(m for m in _imported(path) if len(m.split(".")) > 1 and m.split(".")[1] in UPPER)
    assert not bad, f"funcprune.{name} imports {bad}"


def test_the_checker_sees_lazy_and_absolute_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from .compat import _module\n    import funcprune.bridge\n"
                      "    from funcprune import compat\n")
    assert {"funcprune.compat._module", "funcprune.bridge", "funcprune.compat"} <= _imported(source)


def test_core_runs_with_compat_and_bridge_unimportable():
    # Blocks the upper layers, imports every core module and runs a masked call: nothing may reach them.
    code = f"""
import importlib, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in ("funcprune.compat", "funcprune.bridge"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import torch
sys.modules["funcprune"] = type(sys)("funcprune")  # the package body imports bridge: skip it
sys.modules["funcprune"].__path__ = [{str(PACKAGE)!r}]
for name in {CORE!r}:
    importlib.import_module("funcprune." + name)
from funcprune import call, tree, methods
lin = torch.nn.Linear(3, 2)
p = dict(lin.named_parameters())
masks = tree.prune(p, methods.l1_unstructured, 0.5, include=["weight"])
out = call.functional_call(lin, p, (torch.ones(1, 3),), masks=masks)
assert out.shape == (1, 2)
assert not any(m.startswith(("funcprune.compat", "funcprune.bridge")) for m in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_import_funcprune_does_not_load_compat():
    code = "import sys, funcprune; assert 'funcprune.compat' not in sys.modules, sorted(sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(PACKAGE.parent))
    assert run.returncode == 0, run.stderr
