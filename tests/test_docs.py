"""The docs site builds with every warning an error (broken references, links, missing pages).

The Python blocks of README.md and docs/*.md run as tests of their own (Sybil, see the root
conftest.py); this module builds the site from docs/ with mkdocs + mkdocstrings.
"""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

if not os.environ.get("CI"):  # CI installs the [test] extra and must build; locally, skip without mkdocs
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")


def test_docs_site_builds_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "funcprune" / "index.html").read_text()
    assert 'id="funcprune.functional_call"' in api and 'id="funcprune.global_unstructured"' in api


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 15 * 1024
