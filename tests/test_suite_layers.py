"""Unit: every test file says in its docstring which layer it proves (see conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

LAYERS = ("Unit:", "Integration:", "Acceptance:")


def test_every_test_file_names_its_layer() -> None:
    files = sorted(Path(__file__).parent.glob("test_*.py"))
    assert len(files) > 20
    unnamed = [
        path.name
        for path in files
        if not (ast.get_docstring(ast.parse(path.read_text())) or "").startswith(LAYERS)
    ]
    assert unnamed == []
