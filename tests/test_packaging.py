"""The package as users install it: the research API without the CLI's dependencies, the published genotypes, and a
wheel installed in a virtual environment outside the checkout that runs a search by a packaged config's name."""
import json
import os
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from darts_jax.cnn import genotype_formats, genotypes

REPO = Path(__file__).resolve().parents[1]
# What the `[cli]` extra brings; the research API must import without any of them.
CLI_MODULES = ('orbax', 'grain', 'tensorflow_datasets', 'tensorflow', 'matplotlib', 'tensorboardX', 'graphviz',
               'ml_collections', 'tqdm', 'PIL')
RESEARCH_API = ('import darts_jax, darts_jax.cnn.genotypes, darts_jax.dynamics, darts_jax.cnn, darts_jax.rnn, '
                'darts_jax.cnn.networks, darts_jax.cnn.supernet, darts_jax.bilevel.hypergradient; '
                'from darts_jax import hypergradient, SearchNetwork, NetworkCIFAR, DARTS_V2, derive_genotype')


def test_research_api_imports_none_of_the_cli_dependencies():
  loaded = subprocess.run(
      [sys.executable, '-c', f'{RESEARCH_API}; import sys, json; print(json.dumps(sorted(sys.modules)))'],
      capture_output=True, text=True, check=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu')).stdout
  modules = {name.split('.')[0] for name in json.loads(loaded)}
  assert 'darts_jax' in modules and 'jax' in modules
  assert modules.isdisjoint(CLI_MODULES), sorted(modules & set(CLI_MODULES))


def test_genotypes_module_holds_the_published_cells():
  # The original's cnn/genotypes.py, entry by entry.
  assert [tuple(edge) for edge in genotypes.DARTS_V2.normal] == [
      ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1),
      ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)]
  assert [tuple(edge) for edge in genotypes.DARTS_V2.reduce] == [
      ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0),
      ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)]
  assert [tuple(edge) for edge in genotypes.DARTS_V1.normal] == [
      ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0),
      ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)]
  assert [tuple(edge) for edge in genotypes.DARTS_V1.reduce] == [
      ('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0),
      ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)]
  assert list(genotypes.DARTS_V1.normal_concat) == list(genotypes.DARTS_V2.reduce_concat) == [2, 3, 4, 5]
  assert genotypes.DARTS is genotypes.DARTS_V2
  assert len(genotypes.NASNet.normal) == len(genotypes.AmoebaNet.normal) == 10  # 5 nodes of 2 inputs
  assert genotypes.PRIMITIVES == ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                                  'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')


def _package_files(root):
  return {path.relative_to(root).as_posix() for path in root.rglob('*.py') if '__pycache__' not in path.parts}


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """A virtual environment outside the checkout with the wheel built from the checkout's files installed (no
  dependencies: they come from the system's site-packages) and the wheel's file names."""
  root = tmp_path_factory.mktemp('packaging')
  source = root / 'source'  # a copy: the build writes build/ and *.egg-info next to pyproject.toml
  source.mkdir()
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(REPO / name, source)
  for name in ('darts_jax', 'configs'):
    shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns('__pycache__'))
  pip = [sys.executable, '-m', 'pip', '--disable-pip-version-check', '--no-input']
  subprocess.run([*pip, 'wheel', '--no-deps', '--no-build-isolation', '--no-index', '-w', str(root / 'dist'),
                  str(source)], check=True, capture_output=True)
  wheel, = (root / 'dist').glob('darts_jax-*.whl')
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', '--without-pip', str(root / 'venv')],
                 check=True)
  python = root / 'venv' / 'bin' / 'python'
  # The system's pip, run by the venv's interpreter, installs into the venv; --ignore-installed leaves the
  # checkout's editable install alone.
  subprocess.run([str(python), *pip[1:], 'install', '--no-deps', '--no-index', '--ignore-installed', str(wheel)],
                 check=True, capture_output=True)
  return root / 'venv', set(zipfile.ZipFile(wheel).namelist())


def test_wheel_holds_every_module_and_the_configs(venv):
  _, names = venv
  assert {f'darts_jax/{name}' for name in _package_files(REPO / 'darts_jax')} <= names
  assert {f'darts_jax/configs/{name}' for name in _package_files(REPO / 'configs')} <= names
  assert not any(name.startswith(('configs/', 'tests/')) for name in names)


def test_installed_wheel_runs_outside_the_checkout(venv, data_dir, tmp_path):
  venv_dir, _ = venv
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | {'JAX_PLATFORMS': 'cpu'}
  copy = tmp_path / 'copy'
  copy.mkdir()
  shutil.copy(REPO / 'configs' / 'search_quick.py', copy)  # without its base config: the packaged one is used
  probe = (f'{RESEARCH_API}; import json, runpy; from darts_jax.training import config_utils; '
           "print(json.dumps([darts_jax.__file__, str(config_utils.config_dir()), config_utils.config_to_json("
           "runpy.run_path('copy/search_quick.py')['get_config']())]))")
  output = subprocess.run([str(venv_dir / 'bin' / 'python'), '-c', probe], cwd=tmp_path, env=env, check=True,
                          capture_output=True, text=True).stdout
  package_file, config_dir, copied_config = json.loads(output.splitlines()[-1])
  assert Path(package_file).resolve().is_relative_to(venv_dir.resolve())
  assert Path(config_dir).resolve() == Path(package_file).resolve().parent / 'configs'
  checkout_config = runpy.run_path(str(REPO / 'configs' / 'search_quick.py'))['get_config']()
  assert json.loads(copied_config) == json.loads(checkout_config.to_json_best_effort())

  # One step of the smallest supernet (one cell of two nodes, first order, no Hessian), by the packaged config's name.
  workdir = tmp_path / 'run'
  process = subprocess.run(
      [str(venv_dir / 'bin' / 'darts-search'), '--config', 'search_quick', '--workdir', str(workdir),
       '--config.num_epochs=1', '--config.max_steps_per_epoch=1', '--config.batch_size=8',
       f'--config.data.dir={data_dir}', '--config.data.subset=0', '--config.data.image_size=0',
       '--config.model.layers=1', '--config.model.init_channels=2', '--config.model.steps=2',
       '--config.model.multiplier=2', '--config.diagnostics.hessian_iterations=0', '--config.progress=false',
       f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  assert json.loads((workdir / 'config.json').read_text())['model']['layers'] == 1
  genotype = genotype_formats.genotype_from_json((workdir / 'genotype.json').read_text())
  assert len(genotype.normal) == 4  # 2 nodes of 2 inputs
