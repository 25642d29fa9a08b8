"""The package's import graph: no cycle between its modules, and the layering contract of pyproject.toml
([tool.importlinter], also run by .ci/run as ``lint-imports``) holds and covers every top-level module."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / 'pyproject.toml'


@pytest.fixture(scope='module')
def graph():
  return grimp.build_graph('darts_jax', include_external_packages=False, cache_dir=None)


def _cycles(graph) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
  index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
  for root in sorted(graph.modules):
    if root in index:
      continue
    work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
    index[root] = low[root] = counter[0]
    counter[0] += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, successors = work[-1]
      for successor in successors:
        if successor not in index:
          index[successor] = low[successor] = counter[0]
          counter[0] += 1
          stack.append(successor)
          on_stack.add(successor)
          work.append((successor, iter(sorted(graph.find_modules_directly_imported_by(successor)))))
          break
        if successor in on_stack:
          low[node] = min(low[node], index[successor])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          component = []
          while True:
            member = stack.pop()
            on_stack.discard(member)
            component.append(member)
            if member == node:
              break
          if len(component) > 1:
            components.append(sorted(component))
  return components


def test_cycle_finder_finds_a_cycle():
  # The check below is only as good as the finder: a three-module cycle and a separate self-contained module.
  graph = grimp.ImportGraph()
  for module in ('p', 'p.a', 'p.b', 'p.c', 'p.d'):
    graph.add_module(module)
  for importer, imported in (('p.a', 'p.b'), ('p.b', 'p.c'), ('p.c', 'p.a'), ('p.d', 'p.a')):
    graph.add_import(importer=importer, imported=imported)
  assert _cycles(graph) == [['p.a', 'p.b', 'p.c']]


def test_no_import_cycle_between_modules(graph):
  assert _cycles(graph) == []


def test_layers_name_every_top_level_module(graph):
  contracts = tomllib.loads(PYPROJECT.read_text())['tool']['importlinter']['contracts']
  layered = {name.strip() for contract in contracts if contract['type'] == 'layers'
             for layer in contract['layers'] for name in layer.split('|')}
  top_level = {module for module in graph.modules if module.count('.') == 1} - {'darts_jax.configs'}
  assert top_level - layered == set(), 'add these to a layer of [tool.importlinter] in pyproject.toml'


def test_import_contracts_hold():
  # In a process of its own: the linter's console takes over the interpreter's standard streams.
  command = shutil.which('lint-imports', path=str(Path(sys.executable).parent)) or 'lint-imports'
  result = subprocess.run([command, '--config', str(PYPROJECT), '--no-cache'], cwd=REPO, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr
