"""The core stands without compat: no core module imports ``compat`` or ``bridge``, and nothing outside
``compat/`` imports ``compat`` (lazily or not)."""

import ast
import pathlib
import subprocess
import sys

import pytest

import funcprune

PACKAGE = pathlib.Path(funcprune.__file__).parent
CORE = [
    "_amount",
    "select",
    "_select",
    "_granularity",
    "_select_sharded",
    "_norms",
    "_backend",
    "_masking",
    "_layout",
    "_pytree",
    "methods",
    "tree",
    "call",
    "patterns",
    "distributions",
    "schedules",
    "saliency",
    "dst",
    "stacking",
    "multi",
    "train",
    "export",
    "_dtensor",
    "_sharded",
    "_sharded_channels",
    "_hashstream",
    "_radix",
    "distributed",
]
UPPER = {"compat", "bridge"}


def _imported(path: pathlib.Path, package: str = "funcprune") -> set:
    """Every funcprune module a file of ``package`` imports, at the top or inside functions, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative, from inside the package: level 1 is ``package``, 2 its parent, ...
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "funcprune":
                base = node.module
            else:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            found.update(arg.value for arg in node.args if isinstance(arg, ast.Constant))
    return {name for name in found if name.split(".")[0] == "funcprune"}


@pytest.mark.parametrize("name", CORE)
def test_core_module_imports_neither_compat_nor_bridge(name):
    path = PACKAGE / f"{name}.py"
    assert path.exists(), f"core module {name} is missing: update CORE"
    bad = sorted(m for m in _imported(path) if len(m.split(".")) > 1 and m.split(".")[1] in UPPER)
    assert not bad, f"funcprune.{name} imports {bad}"


def _outside_compat() -> list:
    return sorted(p for p in PACKAGE.rglob("*.py") if "compat" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("path", _outside_compat(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_compat_imports_compat(path):
    """Rule: compat is the top layer; bridge, structural, the package root and the core write torch's
    layout through ``funcprune._layout`` and never import ``funcprune.compat``, at the top or in a function."""
    rel = path.relative_to(PACKAGE)
    package = ".".join(("funcprune",) + rel.parent.parts)
    imported = _imported(path, package)
    bad = sorted(m for m in imported if m == "funcprune.compat" or m.startswith("funcprune.compat."))
    assert not bad, f"funcprune/{rel} imports {bad}"


def test_the_checker_resolves_relative_imports_of_subpackages(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from ..compat import _module\n    from .. import compat\n")
    assert {"funcprune.compat._module", "funcprune.compat"} <= _imported(source, "funcprune.structural")


def test_the_checker_sees_lazy_and_absolute_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        "def f():\n    from .compat import _module\n    import funcprune.bridge\n    from funcprune import compat\n"
    )
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
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(PACKAGE.parent)
    )
    assert run.returncode == 0, run.stderr


def _private_names_crossing(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> list:
    """``from .x import _name`` / ``from funcprune.x import _name`` (not a module) and ``module._name``
    on an imported funcprune module, in one file (``root``: the package folder that absolute imports name).

    Only the package's own modules count: torch's private helpers (``torch.utils._pytree``,
    ``torch.distributed.tensor._utils``) are torch's to rename, not part of this package's layering;
    dunder names (``__version__``) are public by convention. Private *module* names (``_amount``,
    ``compat/_amounts.py``) may be imported: equinox's rule is about the names inside them.
    """

    def is_module(folder: pathlib.Path, name: str) -> bool:
        return (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()

    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    tree = ast.parse(path.read_text(), str(path))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
            elif parts and parts[0] == root.name:
                base, parts = root, parts[1:]
            else:
                continue
            target = base.joinpath(*parts)
            for alias in node.names:
                if target.is_dir() and is_module(target, alias.name):
                    modules.add(alias.asname or alias.name)
                elif private(alias.name):
                    found.append(f"{node.lineno}: imports {alias.name}")
        elif isinstance(node, ast.Import):  # import funcprune._sharded as sharded: sharded._x below
            modules.update(
                alias.asname for alias in node.names if alias.asname and alias.name.split(".")[0] == root.name
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and private(node.attr)
        ):
            found.append(f"{node.lineno}: uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module():
    """A name with a leading underscore is used only in the module that defines it, compat included:
    a helper another module needs gets a public-internal name listed in its module's ``__all__``
    (compat binds torch.nn.utils.prune's own ``_validate_pruning_amount`` ... to such names)."""
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in PACKAGE.rglob("*.py")
        if (found := _private_names_crossing(path))
    }
    assert offenders == {}


def test_the_private_name_checker_sees_imports_and_attributes(tmp_path):
    (tmp_path / "_mod.py").write_text("_x = 1\n")
    user = tmp_path / "user.py"
    user.write_text("from . import _mod\nfrom ._mod import _x\ny = _mod._x\n")
    assert _private_names_crossing(user) == ["2: imports _x", "3: uses _mod._x"]


def test_the_private_name_checker_sees_absolute_imports_and_spares_dunders_and_torch(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_mod.py").write_text("_x = 1\n__all__ = []\n")
    user = pkg / "sub" / "user.py"
    user.write_text(
        "import pkg._mod as m\nfrom pkg._mod import _x, __all__\nfrom pkg import _mod\n"
        "import torch.utils._pytree as tp\nfrom torch.utils._pytree import _private\n"
        "y = m._x + _mod._x + m.__all__ + tp._z\n"
    )
    assert sorted(_private_names_crossing(user, pkg)) == ["2: imports _x", "6: uses _mod._x", "6: uses m._x"]
