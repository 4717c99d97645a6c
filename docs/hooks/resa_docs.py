"""MkDocs hooks for the resa-interp site (named in mkdocs.yml, excluded from the pages).

- The CLI reference is generated at build time from the Typer app: the page `reference/cli.md` holds the marker
  `<!-- cli-reference -->`, replaced by every command's usage, help and a table of every option and argument with
  the help `--help` prints (so the page cannot drift from the CLI).
- The markers `<think>` and `</think>` written bare in prose or docstrings stay visible text (Markdown would pass
  them through as unknown HTML tags, which browsers hide).
- The figures of the repository's `figures/` folder are added to the site as they are (nothing is copied into
  docs/), so pages link them as `../figures/NAME.png` and the strict build checks that every link resolves.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

import typer
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MARKER = "<!-- cli-reference -->"
FIGURE_SUFFIXES = (".png",)


def on_files(files: Files, config) -> Files:
    """Add the repository's figures (PNG) to the site under `figures/`."""
    for path in sorted((ROOT / "figures").iterdir()):
        if path.suffix in FIGURE_SUFFIXES:
            files.append(File(f"figures/{path.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the CLI reference marker with the reference generated from the Typer app."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def on_page_content(content: str, page, config, files) -> str:
    """Show bare `<think>`/`</think>` markers as text (in code they are escaped already)."""
    return content.replace("<think>", "&lt;think&gt;").replace("</think>", "&lt;/think&gt;")


def cli_reference() -> str:
    """Markdown for every command of `resa-interp`: usage, help text, options (as `--help` shows them)."""
    from resa_interp.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="resa-interp")
    parts = [_section("resa-interp", group, root)]
    for name, command in group.commands.items():
        ctx = command.context_class(command, info_name=name, parent=root)
        parts.append(_section(f"resa-interp {name}", command, ctx))
    return "\n".join(parts)


def _section(title: str, command, ctx) -> str:
    """One command: heading, usage, its help as --help prints it, and a table of its parameters."""
    lines = [f"## {title}", "", "```text", command.get_usage(ctx), "```", ""]
    if command.help:
        lines += ['<pre class="cli-help">' + html.escape(command.help.strip()) + "</pre>", ""]
    rows = [p.get_help_record(ctx) for p in command.params]
    rows = [row for row in rows if row is not None]
    if rows:
        lines.append('<table class="cli-options"><thead><tr><th>option</th><th>help</th></tr></thead><tbody>')
        for names, help_text in rows:
            lines.append(f"<tr><td><code>{html.escape(names)}</code></td><td>{html.escape(help_text)}</td></tr>")
        lines += ["</tbody></table>", ""]
    return "\n".join(lines)
