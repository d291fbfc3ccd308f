"""A griffe extension for the API reference: Sphinx roles in docstrings become cross-references.

funcprune's docstrings name other objects with Sphinx roles (``:func:`prune```, ``:class:`~x.Group```,
``:mod:`funcprune.export```). mkdocstrings does not read roles, so they would show as raw text.
Once the package is loaded, each role is resolved from where it is written (the class, the module,
the module's imports, then the package root) and rewritten as an *optional* autorefs reference:
a link where the target is rendered in the reference, plain code where it is not (a private
module, an object of torch), never a broken link.
"""

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(?P<target>[^`]+)`")


def _member(obj, path: str):
    """The object at the dotted ``path`` below ``obj`` (following aliases inside the package), or None."""
    for part in path.split("."):
        try:
            obj = obj.members[part]
            if obj.is_alias:
                obj = obj.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    return obj


def _resolve(package, obj, target: str):
    """The identifier ``target`` names when written in ``obj``'s docstring (its full path), or None."""
    top = package.path
    scopes = []
    scope = obj
    while scope is not None:  # the object itself (a method's class), its parents up to the package
        if scope.kind in (griffe.Kind.CLASS, griffe.Kind.MODULE):
            scopes.append(scope)
        scope = scope.parent
    if target == top or target.startswith(top + "."):
        found = package if target == top else _member(package, target[len(top) + 1 :])
        return found.path if found is not None else None
    for scope in scopes:
        found = _member(scope, target)
        if found is not None:
            return found.path
    return None


def convert(text: str, package, obj) -> str:
    """``text`` with every role replaced by an optional autorefs reference (or plain code)."""

    def replace(match: re.Match) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~.")
        if target.endswith("()"):
            target = target[:-2]
        shown = target.rsplit(".", 1)[-1] if short else target
        identifier = _resolve(package, obj, target) or target
        return f'<autoref identifier="{html.escape(identifier)}" optional><code>{html.escape(shown)}</code></autoref>'

    return ROLE.sub(replace, text)


def _walk(obj, seen: set):
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member, seen)


class DocstringRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg, **kwargs) -> None:  # noqa: D102 - griffe's hook
        for obj in _walk(pkg, set()):
            if obj.docstring is not None:
                obj.docstring.value = convert(obj.docstring.value, pkg, obj)
