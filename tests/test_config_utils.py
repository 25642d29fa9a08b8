"""Tests for darts_jax.training.config."""

import json
import runpy
import shutil
from pathlib import Path

import ml_collections
import pytest

from darts_jax.training import config_utils


_CONFIG_FILE = '''
import ml_collections

def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_epochs = 2
  config.model = ml_collections.ConfigDict()
  config.model.layers = 8
  config.model.init_channels = 16
  config.optim = ml_collections.ConfigDict()
  config.optim.betas = (0.5, 0.999)
  config.optim.use_nesterov = False
  return config
'''

# A minimal CLI wired like run_search.py: prints the parsed config as JSON,
# then shows that the config is locked against misspelt fields in code.
_APP_FILE = '''
from absl import app, flags
from ml_collections import config_flags

from darts_jax.training import config_utils

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = _CONFIG.value
  print(config_utils.config_to_json(config))
  try:
    config.model.layer = 3
  except AttributeError:
    print('LOCKED')


if __name__ == '__main__':
  app.run(main, flags_parser=config_utils.parse_flags)
'''


def _config():
  namespace = {}
  exec(_CONFIG_FILE, namespace)  # pylint: disable=exec-used
  return namespace['get_config']()


def test_flatten_keys():
  assert config_utils.flatten_keys(_config()) == [
      'model.init_channels', 'model.layers', 'num_epochs',
      'optim.betas', 'optim.use_nesterov', 'seed']


def test_check_keys_accepts_leaves_and_subconfigs():
  config_utils.check_keys(_config(), ['seed', 'model.layers', 'model'])


@pytest.mark.parametrize('key', ['model.foo', 'modl.layers', 'seed.x'])
def test_check_keys_lists_valid_keys(key):
  with pytest.raises(ValueError) as e:
    config_utils.check_keys(_config(), ['seed', key])
  assert str(e.value) == (
      f"unknown config key '{key}'; valid keys: model.init_channels, "
      'model.layers, num_epochs, optim.betas, optim.use_nesterov, seed')


def test_config_to_json():
  config = ml_collections.FrozenConfigDict(_config())
  assert json.loads(config_utils.config_to_json(config)) == {
      'seed': 0, 'num_epochs': 2,
      'model': {'layers': 8, 'init_channels': 16},
      'optim': {'betas': [0.5, 0.999], 'use_nesterov': False}}


_UNKNOWN_KEY_ARGS = [
    ['--config=cfg.py', '--config.model.layers=5', '--config.model.foo=3'],
    ['--config', 'cfg.py', '--config.model.foo', '3'],
    ['--config=cfg.py', '--noconfig.model.foo'],
    ['--flagfile=flags.txt'],
]
_OVERRIDE_ARGS = ['--config', 'cfg.py', '--config.model.layers=5', '--config.optim.use_nesterov',
                  '--config.optim.betas=(0.1,0.2)']
# Packaged configs by name, and copies of a config that extends another (configs/search_quick.py extends
# search_cifar10): alone, it extends the packaged base; beside an edited copy of the base, that copy.
_NAMED_ARGS = {('--config', 'search_quick', '--config.model.layers=2'): 'search_quick',
               ('--config=search_quick.py',): 'search_quick',
               ('--config', 'alone/search_quick.py'): 'search_quick',
               ('--config', 'edited/search_quick.py'): 'edited'}
_UNKNOWN_NAME_ARGS = ['--config=search_quik', '--config.seed=1']
_EDITED_SEED = 12345


@pytest.fixture(name='app_runs', scope='module')
def _app_runs(tmp_path_factory, run_cli_cases):
  """The app run with each argument list (in processes forked by tests/cli_harness.py: one import of absl, flags and
  the package for all): ``{tuple(args): {'returncode', 'stdout', 'stderr'}}``."""
  directory = tmp_path_factory.mktemp('app')
  (directory / 'cfg.py').write_text(_CONFIG_FILE)
  (directory / 'app.py').write_text(_APP_FILE)
  (directory / 'flags.txt').write_text('--config=cfg.py\n'
                                       '--config.model.foo=3\n')
  for copy in ('alone', 'edited'):
    (directory / copy).mkdir()
    shutil.copy(config_utils.config_dir() / 'search_quick.py', directory / copy)
  base = (config_utils.config_dir() / 'search_cifar10.py').read_text()
  (directory / 'edited' / 'search_cifar10.py').write_text(
      f'{base}\n_get_config = get_config\n\n\ndef get_config():\n'
      f'  config = _get_config()\n  config.seed = {_EDITED_SEED}\n  return config\n')
  arg_lists = [_OVERRIDE_ARGS] + _UNKNOWN_KEY_ARGS + [list(args) for args in _NAMED_ARGS] + [_UNKNOWN_NAME_ARGS]
  results = run_cli_cases([{'argv': ['app.py', *args], 'cwd': str(directory)} for args in arg_lists])
  return {tuple(args): result for args, result in zip(arg_lists, results)}


def test_cli_applies_overrides_and_locks_config(app_runs):
  result = app_runs[tuple(_OVERRIDE_ARGS)]
  assert result['returncode'] == 0, result['stderr']
  config_json, locked = result['stdout'].rstrip().rsplit('\n', 1)
  config = json.loads(config_json)
  assert config['model']['layers'] == 5
  assert config['optim'] == {'betas': [0.1, 0.2], 'use_nesterov': True}
  assert locked == 'LOCKED'


@pytest.mark.parametrize('args', _UNKNOWN_KEY_ARGS)
def test_cli_unknown_key_fails_listing_valid_keys(app_runs, args):
  result = app_runs[tuple(args)]
  assert result['returncode'] == 1
  assert result['stdout'] == ''
  assert ("FATAL Flags parsing error: unknown config key 'model.foo'; valid "
          'keys: model.init_channels, model.layers, num_epochs, optim.betas, '
          'optim.use_nesterov, seed\n') in result['stderr']
  assert 'Traceback' not in result['stderr']


def _repository_search_quick():
  """configs/search_quick.py of the checkout, run as a file (it loads configs/search_cifar10.py beside it)."""
  path = Path(__file__).resolve().parents[1] / 'configs' / 'search_quick.py'
  return json.loads(config_utils.config_to_json(runpy.run_path(str(path))['get_config']()))


@pytest.mark.parametrize('args', list(_NAMED_ARGS))
def test_cli_loads_configs_by_name_and_copies_with_their_base(app_runs, args):
  result = app_runs[args]
  assert result['returncode'] == 0, result['stderr']
  config = json.loads(result['stdout'].rstrip().rsplit('\n', 1)[0])
  expected = _repository_search_quick()
  if '--config.model.layers=2' in args:
    expected['model']['layers'] = 2
  if _NAMED_ARGS[args] == 'edited':
    assert expected['seed'] != _EDITED_SEED
    expected['seed'] = _EDITED_SEED
  assert config == expected


def test_cli_unknown_config_name_fails_listing_the_packaged_ones(app_runs):
  result = app_runs[tuple(_UNKNOWN_NAME_ARGS)]
  assert result['returncode'] == 1
  assert result['stdout'] == ''
  error = result['stderr'].splitlines()[0]
  assert error.startswith("FATAL Flags parsing error: unknown config 'search_quik'; available: ")
  assert {'search_quick', 'search_cifar10', 'retrain_quick'} <= set(error.split('available: ')[1].split(', '))
  assert 'Traceback' not in result['stderr']
