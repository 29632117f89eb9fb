"""The code stays in parts a reader can hold: no function over 60 lines, no class over 250, no module of
compress/ or targets/ over 600 (issue #17). A part that outgrows them is split along what it does, as
compress/pipeline.py and compress/report.py were."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "cli.py", *sorted((ROOT / "compress").rglob("*.py")), *sorted((ROOT / "targets").rglob("*.py"))]
LIMITS = {"function": 60, "class": 250, "module": 600}


def oversized(path: Path) -> list[str]:
    """What in `path` is over its limit: "compress/x.py:name (function, 74 lines)"."""
    text = path.read_text()
    where = str(path.relative_to(ROOT))
    found = []
    if path.name != "cli.py" and len(text.splitlines()) > LIMITS["module"]:
        found.append(f"{where} (module, {len(text.splitlines())} lines)")
    for node in ast.walk(ast.parse(text)):
        kind = {ast.FunctionDef: "function", ast.AsyncFunctionDef: "function", ast.ClassDef: "class"}.get(type(node))
        if kind is None:
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > LIMITS[kind]:
            found.append(f"{where}:{node.name} ({kind}, {lines} lines)")
    return found


def test_no_function_class_or_module_is_over_its_limit() -> None:
    assert [problem for path in SOURCES for problem in oversized(path)] == []


def test_the_check_sees_a_long_function(tmp_path: Path, monkeypatch) -> None:
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 60)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert oversized(long) == ["long.py:f (function, 61 lines)"]
