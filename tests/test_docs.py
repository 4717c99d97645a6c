"""The docs: the README stays short and carries the two commands, the site builds with `mkdocs build --strict`
offline, and its CLI reference lists every command and option of the Typer app."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from resa_interp.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUN_COMMAND = "scripts/setup.sh && .venv/bin/resa-interp features"
TEST_COMMAND = "scripts/setup.sh dev && .venv/bin/python -m pytest"
QUICK_LOOP = '.venv/bin/python -m pytest -m "not slow"'


def test_readme_is_short_and_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert RUN_COMMAND in readme
    assert TEST_COMMAND in readme  # CI runs the README's test command
    assert QUICK_LOOP in readme
    assert QUICK_LOOP in (ROOT / "docs" / "development.md").read_text()
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):  # relative links resolve in the repository
        assert (ROOT / link).exists(), link


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from mkdocs.yml with --strict (any warning fails), with the network made unreachable."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed (pip install -e .[docs])")
    out = tmp_path_factory.mktemp("site")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=path)
    # a build that reached for the network would fail here instead of depending on it silently
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[proxy] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_site_has_every_page_and_figure(site):
    for page in ("index.html", "getting-started/index.html", "results/index.html", "reference/cli/index.html"):
        assert (site / page).is_file(), page
    for package in ("data", "model", "sae", "features", "interventions", "dashboard", "layers", "tuning", "evaluation"):
        page = (site / "reference" / "api" / package / "index.html").read_text()
        assert f'id="resa_interp.{package}.' in page, package  # members of the package's __all__ are rendered
    assert (site / "figures" / "stability_study.png").is_file()


def test_cli_reference_lists_every_command_and_option(site):
    page = (site / "reference" / "cli" / "index.html").read_text()
    group = typer.main.get_command(app)
    sections = {
        match.group(1): body
        for match, body in zip(
            re.finditer(r'<h2 id="([^"]+)"', page), re.split(r'<h2 id="[^"]+"', page)[1:], strict=True
        )
    }
    commands = {"resa-interp": group} | {f"resa-interp-{name}": command for name, command in group.commands.items()}
    assert set(commands) <= set(sections), sorted(set(commands) - set(sections))
    for anchor, command in commands.items():
        cells = " ".join(html.unescape(cell) for cell in re.findall(r"<td><code>(.*?)</code></td>", sections[anchor]))
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", cells), f"{anchor}: {opt} not listed"
