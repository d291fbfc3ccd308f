"""A griffe extension for the API reference: ``Example:`` opens a doctest section like ``Examples:``.

Google style names the section ``Examples:``; several funcprune docstrings say ``Example:``, which
griffe would render as prose, so doctest output such as ``[0.0, 0.5]`` read as a Markdown link.
"""

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite a docstring's ``Example:`` section header to ``Examples:`` before it is parsed."""

    def on_object(self, *, obj, **kwargs) -> None:  # noqa: D102 - griffe's hook
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
