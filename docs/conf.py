"""Sphinx configuration of the redis_rpc documentation: ``make docs`` builds it into docs/_build/html."""

from __future__ import annotations

import redis_rpc

project = "redis_rpc"
author = "the redis_rpc authors"
copyright = "the redis_rpc authors"
release = redis_rpc.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
]

exclude_patterns = ["_build"]
# ``code`` is literal text, as in the README, rather than a cross-reference.
default_role = "literal"

# Google-style sections (Args:, Returns:, Raises:), as the docstrings write them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"

html_theme = "alabaster"
html_title = f"redis_rpc {release}"
html_static_path: list[str] = []
