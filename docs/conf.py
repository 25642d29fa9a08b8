"""Sphinx configuration of the darts-jax documentation.

Build: ``pip install -e '.[docs]' && sphinx-build -j auto -W --keep-going -b html docs docs/_build/html``.
"""
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / '_ext'))
sys.path.insert(0, str(DOCS.parent))  # the checkout, for autodoc without an installed package

# The tutorials' kernels inherit this environment: the CPU (no accelerator discovery), and XLA:CPU's backend
# optimisation level 0, which about halves their compile time (the build's largest cost) while their tiny programs
# run in milliseconds at any level (tests/conftest.py does the same for the test suite).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()

project = 'darts-jax'
author = 'darts-jax contributors'
copyright = '2026, darts-jax contributors'  # pylint: disable=redefined-builtin
release = version = '0.1.0'

extensions = [
    'myst_nb',  # MyST markdown pages and executed MyST notebooks (includes myst_parser)
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',  # the docstrings' Google-style Args/Returns/Raises sections
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'config_reference',  # docs/_ext: the config-key reference generated from configs/*.py
    'api_exports',  # docs/_ext: a package's __all__ as a table on its API page
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'myst-nb', '.ipynb': 'myst-nb'}
exclude_patterns = ['_build', 'Thumbs.db', '.DS_Store', 'jupyter_execute', '**.ipynb_checkpoints']
templates_path = ['_templates']

myst_enable_extensions = ['dollarmath', 'colon_fence', 'deflist']
myst_heading_anchors = 3

# Notebooks run at every build. A cell that raises is a warning naming the cell and its error, which -W turns into
# a failed build (raising instead would crash Sphinx with the cell's error hidden in a log file).
nb_execution_mode = 'force'
nb_execution_timeout = 300
nb_execution_raise_on_error = False
nb_execution_show_tb = True
nb_merge_streams = True

autosummary_generate = True
autosummary_ignore_module_all = True  # the template's submodule list: every public module (automodule still follows __all__)
autodoc_default_options = {'members': True, 'show-inheritance': True}
autodoc_member_order = 'bysource'
autodoc_typehints = 'signature'
autodoc_mock_imports = ['torch']  # torch_reference documents without the [torch] extra
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # 'Attributes:' as fields of the class: undoc-members documents the attributes themselves
# A package's page repeats its modules' classes unindexed (the template), so a field name there (e.g. an attribute
# `momentum`) has no local target and can match several classes' attributes: Sphinx then warns and links the first.
suppress_warnings = ['ref.python']

html_theme = 'sphinx_book_theme'
html_title = 'darts-jax'
html_theme_options = {
    'show_toc_level': 2,
    'navigation_with_keys': False,
}
html_static_path = []
