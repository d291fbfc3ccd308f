"""Runs every Python code block of README.md and docs/*.md as a test (Sybil).

Each block runs in a fresh namespace of its own, in a temporary working directory, so a block
passes only if it runs as written: its imports, model and inputs defined in the block itself.
"""

import os
import tempfile

from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser


def run_block(example) -> None:
    """Execute one ```python block alone (line numbers in tracebacks are the file's)."""
    code = compile("\n" * example.line + example.parsed, example.path, "exec")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            exec(code, {"__name__": "__main__"})
        finally:
            os.chdir(cwd)


# docs/_ext holds the mkdocs build's griffe extension, not tests (and imports griffe).
collect_ignore = ["docs/_ext"]

pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=run_block)],
    patterns=["README.md", "docs/*.md"],
).pytest()
