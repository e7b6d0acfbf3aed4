"""Sphinx configuration for the kronalg documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

# Import the packages from this checkout even when they are not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kronalg

project = "kronalg"
author = "kronalg developers"
copyright = "kronalg developers"
release = version = kronalg.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "img", "Thumbs.db", ".DS_Store"]

# MyST: the pages are plain Markdown linked to each other with relative ``.md`` links.
myst_heading_anchors = 3

# autodoc + numpydoc: one entry per public name; the class member tables of numpydoc would need autosummary.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"show-inheritance": True}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

html_title = f"kronalg {release}"
try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # offline fallback: the theme that ships with Sphinx
    html_theme = "alabaster"
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
