"""``.. exports:: PACKAGE``: a table of every name in a package's ``__all__``, linked to where it is documented.

autodoc documents a package's functions and classes, but module-level data (genotypes, tables, type aliases) only
where the defining module documents it; this table lists every exported name with what it is and its summary line.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any


def _target(package: str, name: str, value: Any) -> str:
  """The documented name of an exported object: where it is defined (data: the submodule that holds it)."""
  if inspect.isclass(value) or inspect.isfunction(value):
    return f'{value.__module__}.{value.__qualname__}'
  for module_name, module in sorted(sys.modules.items()):
    if module_name.startswith(package + '.') and getattr(module, name, None) is value and not hasattr(module, '__path__'):
      return f'{module_name}.{name}'
  return f'{package}.{name}'


def _summary(value: Any) -> str:
  if inspect.isclass(value) or inspect.isfunction(value) or inspect.ismodule(value):
    doc = inspect.getdoc(value) or ''
    return doc.split('\n\n')[0].replace('\n', ' ')
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


def setup(app):
  from docutils import nodes  # pylint: disable=import-outside-toplevel
  from sphinx import addnodes  # pylint: disable=import-outside-toplevel
  from sphinx.util.docutils import SphinxDirective  # pylint: disable=import-outside-toplevel

  class Exports(SphinxDirective):
    required_arguments = 1

    def run(self):
      package = self.arguments[0]
      module = importlib.import_module(package)
      table = nodes.table()
      group = nodes.tgroup(cols=3)
      table += group
      for width in (25, 10, 65):
        group += nodes.colspec(colwidth=width)
      body = nodes.tbody()
      group += body
      for name in getattr(module, '__all__', []):
        value = getattr(module, name)
        kind = ('module' if inspect.ismodule(value) else 'class' if inspect.isclass(value)
                else 'function' if callable(value) else 'data')
        target = value.__name__ if inspect.ismodule(value) else _target(package, name, value)
        ref = addnodes.pending_xref('', nodes.literal(text=name), refdomain='py',
                                    reftype='mod' if kind == 'module' else 'obj', reftarget=target,
                                    refwarn=False, refexplicit=True)
        row = nodes.row()
        row += nodes.entry('', nodes.paragraph('', '', ref))
        row += nodes.entry('', nodes.paragraph(text=kind))
        row += nodes.entry('', nodes.paragraph(text=_summary(value)))
        body += row
      return [table]

  app.add_directive('exports', Exports)
  return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
