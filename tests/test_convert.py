"""Tests for darts_jax.convert: checkpoints of the original PyTorch networks (darts_jax.torch_reference, the
original's module structure and state_dict keys) converted to this project's networks, compared by their outputs, and back."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch', reason="the conversion tests need PyTorch: pip install -e '.[torch]'")
# Tiny networks: one thread is faster than PyTorch's pool, which oversubscribes the cores XLA and the other test worker
# are using.
torch.set_num_threads(1)

from darts_jax import torch_reference as torch_darts  # noqa: E402  (needs torch)
from darts_jax.training.config_utils import load_config_module  # noqa: E402
from darts_jax import convert  # noqa: E402
from darts_jax.cli import evaluate  # noqa: E402
from darts_jax.cnn import genotype_formats, networks  # noqa: E402
from darts_jax.data import imagenet  # noqa: E402
from darts_jax.cnn.genotypes import Genotype  # noqa: E402
from darts_jax.cnn.supernet import SearchNetwork  # noqa: E402

retrain_cifar10 = load_config_module('retrain_cifar10')

# Every parametric op of a retrained network (sep convs 3/5/7, dil convs 3/5, conv_7x1_1x7, factorized reduction)
# and every parameter-free one. Three concatenated states of C channels: the first two normal cells map 3C to 3C,
# so they run as one scan and their weights are stacked.
GENOTYPE = Genotype(
    normal=[('sep_conv_3x3', 0), ('dil_conv_5x5', 1), ('conv_7x1_1x7', 2), ('skip_connect', 0),
            ('avg_pool_3x3', 1), ('sep_conv_7x7', 3)], normal_concat=[2, 3, 4],
    reduce=[('skip_connect', 0), ('max_pool_3x3', 1), ('dil_conv_3x3', 2), ('sep_conv_5x5', 1),
            ('avg_pool_3x3', 0), ('none', 3)], reduce_concat=[2, 3, 4])
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('skip_connect', 0), ('max_pool_3x3', 1)], reduce_concat=[2])

# float32 on both sides, sums in other orders: differences are rounding (measured <= 1e-5 on O(1) logits, BN over
# 4 examples amplifying them in training mode); a transposed kernel, a swapped BN statistic or a wrong stride changes
# the logits by O(0.1).
TOL = dict(rtol=1e-4, atol=2e-5)


def _nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def _state_dict(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _compare(torch_net, net, variables, x, *, train):
  """Logits (and auxiliary logits, and updated BN statistics in training mode) of both networks on `x` (NCHW)."""
  torch_net.train(train)
  with torch.no_grad():
    expected, expected_aux = torch_net(torch.from_numpy(x))
  if not train:
    logits, _ = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, _nhwc(x))
    np.testing.assert_allclose(logits, expected.numpy(), **TOL)
    return
  (logits, logits_aux), updates = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, _nhwc(x))
  np.testing.assert_allclose(logits, expected.numpy(), **TOL)
  if expected_aux is not None:
    np.testing.assert_allclose(logits_aux, expected_aux.numpy(), **TOL)
  # The running statistics after the step: PyTorch's momentum-0.1 update with the unbiased variance, on both sides.
  updated = convert.to_torch_state_dict({'params': variables['params'], **updates}, genotype=net.genotype,
                                        layers=net.layers, auxiliary=net.auxiliary,
                                        network='cifar' if isinstance(net, networks.NetworkCIFAR) else 'imagenet')
  for key, value in torch_net.state_dict().items():
    if key.endswith('running_mean') or key.endswith('running_var'):
      np.testing.assert_allclose(updated[key], value.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  """The original's NetworkCIFAR with random BN statistics and affine parameters, saved as utils.save does."""
  torch.manual_seed(0)
  torch_net = torch_darts.randomize_(torch_darts.NetworkCIFAR(4, 5, 6, True, GENOTYPE))
  path = tmp_path_factory.mktemp('cifar') / 'model.pt'
  torch.save(torch_net.state_dict(), path)
  return torch_net, path


def test_cifar_checkpoint_converts_with_matching_logits_in_eval_and_train_mode(cifar):
  torch_net, path = cifar
  state_dict = convert.load_torch_checkpoint(path)
  assert convert.infer_architecture(state_dict) == dict(network='cifar', C=4, layers=6, num_classes=5,
                                                        auxiliary=True, in_channels=3)
  variables = convert.from_torch_state_dict(state_dict, genotype=GENOTYPE)  # the rest inferred from the shapes
  assert 'cells_0_1' in variables['params']['cells']  # the two identical normal cells, stacked
  net = convert.network_for(GENOTYPE, C=4, num_classes=5, layers=6, auxiliary=True, depthwise_impl='xla')
  x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
  _compare(torch_net, net, variables, x, train=False)
  _compare(torch_net, net, variables, x, train=True)


def test_round_trip_is_exact_and_loads_strictly_into_the_original(cifar):
  torch_net, _ = cifar
  state_dict = _state_dict(torch_net)
  for scan in (True, False):
    variables = convert.from_torch_state_dict(state_dict, genotype=GENOTYPE, scan=scan)
    back = convert.to_torch_state_dict(variables, genotype=GENOTYPE, layers=6, auxiliary=True)
    assert back.keys() == state_dict.keys()
    for key, value in state_dict.items():
      if not key.endswith('num_batches_tracked'):
        np.testing.assert_array_equal(back[key], value, err_msg=key)  # only transposes: bit for bit
  fresh = torch_darts.NetworkCIFAR(4, 5, 6, True, GENOTYPE)
  fresh.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()}, strict=True)


def test_imagenet_checkpoint_of_data_parallel_converts_with_matching_logits(tmp_path):
  """train_imagenet.py's format: {'state_dict': ...} of an nn.DataParallel model (keys prefixed 'module.')."""
  torch.manual_seed(1)
  torch_net = torch_darts.randomize_(torch_darts.NetworkImageNet(8, 5, 4, True, SMALL), seed=1)
  path = tmp_path / 'imagenet.pt'
  torch.save({'epoch': 3, 'best_acc_top1': 0.5, 'state_dict': {f'module.{k}': v for k, v in
                                                               torch_net.state_dict().items()}}, path)
  variables = convert.from_torch_state_dict(convert.load_torch_checkpoint(path), network='imagenet',
                                            genotype=genotype_formats.genotype_to_json(SMALL))  # as text
  net = convert.network_for(SMALL, C=8, num_classes=5, layers=4, auxiliary=True, network='imagenet')
  # 224x224: the auxiliary head reads the 7x7 map after the second reduction.
  x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
  _compare(torch_net, net, variables, x, train=True)


def test_pretrained_imagenet_checkpoint_evaluates_on_an_image_folder(tmp_path):
  """evaluate --pretrained on an ImageFolder directory: top-1 equals the PyTorch network's on the same images, each
  resized (shorter side 256), centre-cropped to 224 and normalised as the original's test_imagenet.py."""
  torch.manual_seed(3)
  torch_net = torch_darts.randomize_(torch_darts.NetworkImageNet(8, 3, 4, False, SMALL), seed=3).eval()
  torch.save({'state_dict': {f'module.{k}': v for k, v in torch_net.state_dict().items()}}, tmp_path / 'model.pt')
  rng = np.random.default_rng(3)
  crops, labels = [], []
  for label, name in enumerate(['n01', 'n02', 'n03']):
    (tmp_path / 'val' / name).mkdir(parents=True)
    for i, size in enumerate([(300, 260), (256, 320)]):  # landscape and portrait
      image = Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), np.uint8))
      image.save(tmp_path / 'val' / name / f'{i}.png')
      crops.append(imagenet.center_crop(image))
      labels.append(label)
  assert crops[0].shape == (224, 224, 3)
  x = (np.stack(crops) / 255.0 - imagenet.MEAN) / imagenet.STD
  with torch.no_grad():
    logits, _ = torch_net(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
  config = retrain_cifar10.get_config()
  config.batch_size = 4  # two batches, the second padded
  results = evaluate.evaluate_pretrained(tmp_path / 'model.pt', genotype_formats.genotype_to_json(SMALL), config,
                                         str(tmp_path / 'val'))
  assert (results['network'], results['num_classes'], results['num_test']) == ('imagenet', 3, 6)
  assert results['test_accuracy'] == np.mean(logits.numpy().argmax(-1) == np.array(labels))
  assert results['test_top5'] == 1.0


def test_search_network_and_alphas_convert_and_continue_identically():
  """model_search.Network after a training step in PyTorch (so its BN statistics are data-dependent and, as in any
  real run, equal on the edges leaving one node), its alphas as extra entries; the next training step agrees."""
  torch.manual_seed(2)
  torch_net = torch_darts.SearchNetwork(4, 5, 3, steps=2, multiplier=2).train()
  alphas = {kind: 0.5 * torch.randn(5, 8) for kind in ('normal', 'reduce')}
  rng = np.random.default_rng(2)
  x1, x2 = (rng.normal(size=(4, 3, 16, 16)).astype(np.float32) for _ in range(2))
  with torch.no_grad():
    torch_net(torch.from_numpy(x1), alphas['normal'], alphas['reduce'])
  state_dict = {**_state_dict(torch_net), 'alphas_normal': alphas['normal'], 'alphas_reduce': alphas['reduce']}
  variables, converted_alphas = convert.search_from_torch_state_dict(state_dict, steps=2, multiplier=2)
  back = convert.search_to_torch_state_dict(variables, converted_alphas, layers=3, steps=2)
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[key], np.asarray(value), err_msg=key)

  with torch.no_grad():
    expected = torch_net(torch.from_numpy(x2), alphas['normal'], alphas['reduce'])
  net = SearchNetwork(C=4, num_classes=5, layers=3, steps=2, multiplier=2, depthwise_impl='xla')
  logits, updates = jax.jit(lambda v, x, a: net.apply(v, x, a, train=True, mutable=['batch_stats']))(
      variables, _nhwc(x2), converted_alphas)
  np.testing.assert_allclose(logits, expected.numpy(), **TOL)
  updated = convert.search_to_torch_state_dict({'params': variables['params'], **updates}, layers=3, steps=2)
  for key, value in torch_net.state_dict().items():
    if 'running' in key:
      np.testing.assert_allclose(updated[key], value.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


def test_mismatches_name_the_keys_and_shapes(cifar):
  state_dict = _state_dict(cifar[0])
  with pytest.raises(ValueError,
                     match=r'shape mismatches: stem\.0\.weight \(12, 3, 3, 3\) \(expected \(24, 3, 3, 3\)\)'):
    convert.from_torch_state_dict(state_dict, genotype=GENOTYPE, C=8)
  # Another genotype: its ops' tensors are missing and the checkpoint's are left over.
  with pytest.raises(ValueError, match=r'missing keys: cells\.0\._ops\.1\.op\.5\.weight, .*unexpected keys: '
                                       r'cells\.0\._ops\.2\.1\.weight \(4, 4, 1, 7\)'):
    convert.from_torch_state_dict(state_dict, genotype='DARTS_V2')
  with pytest.raises(ValueError, match=r'unexpected keys: extra \(3,\)'):
    convert.from_torch_state_dict({**state_dict, 'extra': np.zeros(3)}, genotype=GENOTYPE)
  with pytest.raises(ValueError, match='not a DARTS network state dict'):
    convert.from_torch_state_dict({'fc.weight': np.zeros((2, 2))}, genotype=GENOTYPE)


def test_reading_a_checkpoint_without_torch_says_how_to_install_it(cifar, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch raises ImportError
  with pytest.raises(ImportError, match=r"pip install 'darts-jax\[torch\]'"):
    convert.load_torch_checkpoint(cifar[1])
