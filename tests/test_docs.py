"""The docs site builds with every warning an error (broken references, links, missing pages).

The Python blocks of README.md and docs/*.md run as tests of their own (Sybil, see the root
conftest.py); this module builds the site from docs/ with mkdocs + mkdocstrings.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# a Sphinx role as it shows when nothing converts it: :func:`x` (or, after Markdown, :func:<code>x</code>)
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):(?:`|<code>)")

if not os.environ.get("CI"):  # CI installs the [test] extra and must build; locally, skip without mkdocs
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")


def test_docs_site_builds_strict_with_docstring_roles_as_cross_references(tmp_path):
    """Rule: the site builds with every warning an error, and the API reference shows no raw Sphinx role
    (``:func:`x```): each renders as a link, or as code where its target is not in the reference."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "funcprune" / "index.html").read_text()
    assert 'id="funcprune.functional_call"' in api and 'id="funcprune.global_unstructured"' in api
    pages = {p: p.read_text() for p in (tmp_path / "site" / "api").rglob("*.html")}
    raw = {str(p.relative_to(tmp_path / "site")): ROLE.findall(text) for p, text in pages.items() if ROLE.search(text)}
    assert not raw, f"docstring roles left raw in the API reference: {raw}"
    links = sum(text.count('class="autorefs autorefs-internal"') for text in pages.values())
    assert links >= 100, f"only {links} cross-references rendered as links"
    saliency = (tmp_path / "site" / "api" / "saliency" / "index.html").read_text()
    schedules = (tmp_path / "site" / "api" / "schedules" / "index.html").read_text()
    assert 'id="funcprune.saliency.LossFn"' in saliency and 'id="funcprune.schedules.Schedule"' in schedules


def test_readme_is_short():
    assert len((ROOT / "README.md").read_bytes()) <= 15 * 1024


def _install_blocks() -> list:
    """The bash blocks of the README's Install section, as lists of lines."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip().splitlines() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)]


def test_readme_install_is_two_commands_and_a_cpu_path_that_installs_torch_with_torchvision():
    """Rule: the Install section sets up with exactly two commands (install + main example, test extras +
    suite); the only other pip line is the CPU note, which installs torch and torchvision together from
    the CPU index as a pair that works together."""
    setup, cpu = _install_blocks()
    assert len(setup) == 2
    assert setup[0].startswith("pip install -e '.[examples]' && python -m examples.quickstart")
    assert setup[1].startswith("pip install -e '.[test]' && ") and "&& python -m pytest" in setup[1]
    assert setup[1].split("#")[0].strip() in (ROOT / ".ci" / "run").read_text(), (
        ".ci/run runs the README's test command"
    )
    assert cpu == ["pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu"]
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.lstrip().startswith("pip install")]
    assert len(commands) == 3 and 'python -m pytest -m "not slow"' in readme


def test_extras_accept_every_supported_torch_torchvision_pair():
    """Rule: with a working torch/torchvision pair installed, ``pip install -e '.[test]'`` (or ``[examples]``)
    finds both already satisfying the ranges, so it changes neither (a CPU torch stays CPU)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_spec = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch").specifier
    for extra in ("examples", "test"):
        extras = [Requirement(r) for r in project["optional-dependencies"][extra]]
        vision = [r for r in extras if r.name == "torchvision"]
        assert len(vision) == 1, f"[{extra}] must require torchvision once"
        for torch_version, vision_version in (("2.13.0", "0.28.0"), ("2.14.1", "0.29.1")):
            assert torch_spec.contains(torch_version) and vision[0].specifier.contains(vision_version), extra
