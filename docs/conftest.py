"""Run the ```pycon examples of the docs pages as doctests, skipping a page whose libraries are not installed.

pytest collects ``docs/*.md`` through ``--doctest-glob=*.md`` (see ``pyproject.toml``). A page that imports torch,
array_api_strict or matplotlib is skipped, with the reason, when that library is missing (``pip install -e
".[test]"`` has no torch), instead of failing on the import.
"""

from __future__ import annotations

import importlib.util
import re

import pytest

_IMPORT = re.compile(r"^\s*>>> (?:import|from) (\w+)", re.MULTILINE)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the doctest of a page as skipped when one of the top-level modules it imports is not installed."""
    for item in items:
        if not isinstance(item, pytest.DoctestItem) or not str(item.path).endswith(".md"):
            continue
        names = set(_IMPORT.findall(item.path.read_text(encoding="utf-8")))
        missing = sorted(name for name in names if importlib.util.find_spec(name) is None)
        if missing:
            item.add_marker(pytest.mark.skip(reason=f"{item.path.name} needs {', '.join(missing)}"))
