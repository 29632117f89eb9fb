"""report.md: the report as markdown, every string from the results escaped so it renders as itself."""

from __future__ import annotations

import html
import re
from typing import Any

from compress.report import text
from compress.report.findings import Findings
from compress.report.fmt import NONE
from compress.results import Results

# Underscores inside a word (ai_edge_litert) never start emphasis, so only the others are escaped.
_MD_SPECIAL = re.compile(r"([\\`*\[\]|]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def markdown(results: Results, table: list[dict[str, Any]], findings: Findings) -> str:
    columns = text.columns(results, table)
    meta = text.meta_lines(results)
    lines = [f"# {_md(text.title(results))}", ""]
    lines += [f"- {_md(line)}" for line in meta] if text.several(results) else [_md(meta[0])]
    lines += ["", "## Recommendation", "", _md(findings.constraints), ""]
    lines += [f"- {_md(line)}" for line in text.pick_lines(findings.picks)]
    lines += ["", f"![{text.PLOT_ALT}](plot.png)", "", "## Scratch baselines", ""]
    lines += [f"- {_md(v)}" for v in findings.verdicts] or [text.NO_VERDICT]
    if findings.failed:
        lines += ["", "## Failed", ""] + [f"- {_md(line)}" for line in findings.failed]
    if findings.int8:
        lines += ["", "## int8", ""] + [f"- {_md(line)}" for line in findings.int8]
    lines += ["", "## Results", "", "| " + " | ".join(_md(c.header) for c in columns) + " |"]
    lines.append("|" + "|".join("---:" if c.fmt else "---" for c in columns) + "|")
    lines += ["| " + " | ".join(_md(c.text(row)) for c in columns) + " |" for row in table]
    lines += ["", _md(text.table_note(table)), "", "## Candidates", ""]
    lines += [f"- {_md(line)}" for line in text.candidates(table)]
    lines += ["", "## Reproduce", ""]
    for label, run in text.runs(results):
        lines += [f"### {_md(label)}", ""] if label else []
        lines += [_fence(run.command or NONE), ""]
        lines += [f"- {_md(line)}" for line in text.repro_lines(run)] + [""]
    return "\n".join(lines)


def _md(value: Any) -> str:
    """Text that renders as itself in a markdown table cell: no html, no emphasis, no column breaks."""
    flat = " ".join(str(value).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def _fence(code: str) -> str:
    """A fenced code block whose fence is longer than any backtick run inside `code`."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{code}\n{fence}"
