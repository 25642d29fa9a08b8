"""Tests for the search step (darts_jax.bilevel.step on the CNN space), the search loop (darts_jax.tasks.search) and darts_jax.training.parallel.

The supernet takes tens of seconds to compile, and neither the step's update rules nor the loop's bookkeeping
depend on it, so these tests run on `TinySupernet`: a Linen module with `SearchNetwork`'s interface (alphas as an
argument, the project's BatchNorm with batch statistics averaged over ``axis_name``) that compiles in well under a
second. The real supernet runs end to end, on 1 and 4 devices and through a SIGKILL, in test_search_cli.py.
"""
import gzip
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax.training.config_utils import load_config_module
from darts_jax.cnn import cost, genotype_formats, genotypes
from darts_jax import data, dynamics
from darts_jax.training import loop, optimizers, parallel, reporting
from darts_jax.bilevel import step as bilevel_step
from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search
from darts_jax.training.checkpointing import Checkpointer
from darts_jax.bilevel.hypergradient import hypergradient
from darts_jax.cnn.ops import BatchNorm

search_quick = load_config_module('search_quick')
MEAN, STD = np.array([0.3], np.float32), np.array([0.4], np.float32)


class TinySupernet(nn.Module):
  """Dense -> BN -> tanh, each hidden unit scaled by every op's total mixing weight, -> Dense.

  Has `SearchNetwork`'s constructor fields, so `search.search` can build it from a config; as it, it mixes by
  ``softmax(alphas)`` or (``mixing='weights'``) takes the mixing weights.
  """
  C: int = 4
  num_classes: int = 10
  layers: int = 1
  steps: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  depthwise_impl: str = 'shift'
  axis_name: str | None = None
  dtype: str = 'float32'  # of the hidden layer, as SearchNetwork's activations
  remat: bool = False
  mixing: str = 'softmax'

  @nn.compact
  def __call__(self, x, alphas, train=True):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    h = jnp.tanh(BatchNorm(axis_name=self.axis_name)(nn.Dense(self.C, dtype=self.dtype)(x), train))
    weights = alphas if self.mixing == 'weights' else jax.tree.map(lambda a: jax.nn.softmax(a, -1), alphas)
    mix = (weights['normal'] + weights['reduce'] ** 2).sum(0)  # (8,)
    features = (h[:, :, None] * mix.astype(self.dtype)).reshape(x.shape[0], -1).astype(jnp.float32)
    return nn.Dense(self.num_classes)(features)


def _images(rng, n, size=8):
  """(n, size, size, 1) uint8 images whose label sets the place of a bright pixel over noise, int32 labels."""
  labels = rng.integers(0, 10, n).astype(np.int32)
  images = rng.integers(0, 96, (n, size, size, 1)).astype(np.uint8)
  images[np.arange(n), labels % size, (labels // size) * 3] = 255
  return images, labels


def write_fashion_mnist(directory, n_train=96, n_test=16, size=8):
  """Writes a small synthetic dataset as Fashion-MNIST's four IDX .gz files."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    images, labels = _images(rng, n, size)
    for kind, array, magic in (('images-idx3', images[..., 0], 2051), ('labels-idx1', labels, 2049)):
      with gzip.open(os.path.join(directory, f'{prefix}-{kind}-ubyte.gz'), 'wb') as f:
        f.write(np.array([magic, *array.shape], '>i4').tobytes() + array.astype(np.uint8).tobytes())


# ----------------------------------------------------------------------------------------------------------------
# Schedules and optimizers.


def test_learning_rate_is_cosine_annealed_per_epoch():
  schedule = optimizers.epoch_cosine_schedule(0.025, 0.001, num_epochs=4, steps_per_epoch=3)
  lrs = np.array([schedule(t) for t in range(12)])
  # PyTorch's CosineAnnealingLR(T_max=4, eta_min=0.001) stepped at each epoch start, as the original.
  expected = [0.001 + 0.5 * 0.024 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
  np.testing.assert_allclose(lrs, np.repeat(expected, 3), rtol=1e-6)  # float32 cosine


def test_weight_optimizer_is_clip_then_coupled_decay_then_momentum():
  w = {'a': jnp.array([1.0, -2.0]), 'b': jnp.array([3.0])}
  tx = optimizers.weight_optimizer(0.1, momentum=0.9, weight_decay=0.01, grad_clip=5.0)
  state = tx.init(w)
  buffer = {'a': np.zeros(2), 'b': np.zeros(1)}
  for g in ({'a': jnp.array([6.0, 0.0]), 'b': jnp.array([8.0])},  # norm 10: clipped by 1/2
            {'a': jnp.array([1.0, 1.0]), 'b': jnp.array([0.0])}):  # norm < 5: not clipped
    updates, state = tx.update(g, state, w)
    scale = min(1.0, 5.0 / np.sqrt(sum(np.sum(np.square(v)) for v in g.values())))
    # PyTorch SGD: d = g + wd·w; buf = momentum·buf + d; w -= lr·buf.
    buffer = {k: 0.9 * buffer[k] + scale * np.asarray(g[k]) + 0.01 * np.asarray(w[k]) for k in w}
    expected = {k: np.asarray(w[k]) - 0.1 * buffer[k] for k in w}
    w = optax.apply_updates(w, updates)
    for k in w:
      np.testing.assert_allclose(w[k], expected[k], rtol=1e-6)  # float32
      np.testing.assert_allclose(bilevel_step.momentum_buffer(state)[k], buffer[k], rtol=1e-6)


def test_arch_optimizer_is_adam_with_decay_added_to_the_gradient():
  alpha = jnp.array([0.5, -1.0])
  tx = optimizers.arch_optimizer(3e-4, b1=0.5, b2=0.999, weight_decay=1e-3)
  updates, _ = tx.update(jnp.array([0.2, 0.0]), tx.init(alpha), alpha)
  g = np.array([0.2, 0.0]) + 1e-3 * np.array([0.5, -1.0])
  # First Adam step: the bias-corrected moments are g and g², so the update is -lr·g/(|g| + eps).
  np.testing.assert_allclose(updates, -3e-4 * g / (np.abs(g) + 1e-8), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The search step.

LR, ARCH_LR = 0.1, 0.3  # a large arch lr makes "weights step with the old alphas" clearly distinguishable


# Small counts keep the compiled programs small; the hypergradient's own tests check the methods at any count.
METHOD_OPTIONS = {'unrolled': dict(unroll_steps=2), 'implicit_cg': dict(implicit_iterations=2, implicit_damping=1.0),
                  'implicit_neumann': dict(implicit_iterations=2, implicit_damping=1.0)}


def _step_setup(method='exact', augment=False, axis_name=None, steps_per_epoch=100):
  model = TinySupernet(axis_name=axis_name)
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=steps_per_epoch)
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1), optimizers.weight_optimizer(schedule),
                                     optimizers.arch_optimizer(ARCH_LR))
  preprocess = data.make_preprocess(MEAN, STD, augment=augment, axis_name=axis_name)
  step = bilevel_step.make_search_step(cnn_space.search_problem(model, schedule, preprocess), method=method,
                                      **METHOD_OPTIONS.get(method, {}))
  return model, schedule, state, step


def _batches(n, batch_size=8, seed=1):
  rng = np.random.default_rng(seed)
  return [(_images(rng, batch_size), _images(rng, batch_size)) for _ in range(n)]


def _reference_step(model, state, train, val, method, lr, alphas_for_weights='new'):
  """The original's `train()` step written out: Architect.step, then the clipped SGD step."""
  x_train = (train[0].astype(np.float32) / 255 - MEAN) / STD
  x_val = (val[0].astype(np.float32) / 255 - MEAN) / STD

  def loss(params, alphas, batch):
    logits, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch[0], alphas, train=True,
                            mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  m = bilevel_step.momentum_buffer(state.weight_opt_state)
  h = hypergradient(loss, loss, state.params, state.alphas, (x_train, train[1]), (x_val, val[1]), eta=lr,
                    method=method, momentum_buffer=m, momentum=0.9,
                    weight_decay=3e-4, **METHOD_OPTIONS.get(method, {}))
  arch_updates, _ = state.arch_tx.update(h, state.arch_opt_state, state.alphas)
  alphas = optax.apply_updates(state.alphas, arch_updates)

  def weight_loss(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats}, x_train,
                                  alphas if alphas_for_weights == 'new' else state.alphas, train=True,
                                  mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, train[1]).mean(), updates['batch_stats']

  (_, batch_stats), g = jax.value_and_grad(weight_loss, has_aux=True)(state.params)
  scale = jnp.minimum(1.0, 5.0 / optax.tree.norm(g))
  buffer = jax.tree.map(lambda g_, w, m_: scale * g_ + 3e-4 * w + 0.9 * m_, g, state.params, m)
  params = jax.tree.map(lambda w, b: w - lr * b, state.params, buffer)
  return alphas, params, batch_stats, buffer


# The unrolled and implicit methods' hypergradients are checked in tests/test_hypergradient_family.py and their search
# steps run in test_search_runs_the_configured_hypergradient; their composition here is the other methods'.
@pytest.mark.parametrize('method', [m if m in ('first_order', 'fd', 'exact')
                                    else pytest.param(m, marks=pytest.mark.slow) for m in bilevel_step.METHODS])
def test_search_step_is_arch_step_then_weight_step_with_the_new_alphas(method):
  model, _, state, step = _step_setup(method)
  step = jax.jit(step)
  for train, val in _batches(2):  # the second step has a momentum buffer and Adam moments
    alphas, params, batch_stats, buffer = _reference_step(model, state, train, val, method, LR)
    _, stale_params, _, _ = _reference_step(model, state, train, val, method, LR, alphas_for_weights='old')
    state, metrics = step(state, train, val)
    # The same float32 computation in another op order (jit fuses): ~1e-6 relative. The central difference
    # divides rounding errors of the gradients by 2R, hence a looser bound for 'fd'.
    atol = 1e-5 if method == 'fd' else 1e-6
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=atol)
    jax.tree.map(close, state.alphas, alphas)
    jax.tree.map(close, state.params, params)
    jax.tree.map(close, bilevel_step.momentum_buffer(state.weight_opt_state), buffer)
    # BN running statistics: exactly one update, by the weight step's forward pass.
    jax.tree.map(close, state.batch_stats, batch_stats)
    # The tolerance above separates the original's order from a weight step with the pre-update alphas.
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(stale_params),
                                                               jax.tree.leaves(params))) > 1e-4
    assert bool(metrics['finite']) and float(metrics['lr']) == pytest.approx(LR)
  assert int(state.step) == 2


def test_step_compiles_once_and_the_learning_rate_changes_at_epoch_boundaries():
  _, _, state, step = _step_setup('first_order', steps_per_epoch=2)
  traces = []

  def counted(*args):
    traces.append(None)
    return step(*args)

  jitted = jax.jit(counted)
  lrs = []
  for train, val in _batches(5):
    state, metrics = jitted(state, train, val)
    lrs.append(float(metrics['lr']))
  assert len(traces) == 1
  schedule = optimizers.epoch_cosine_schedule(LR, 0.001, num_epochs=3, steps_per_epoch=2)
  np.testing.assert_allclose(lrs, [schedule(0)] * 2 + [schedule(2)] * 2 + [schedule(4)], rtol=1e-6)
  assert lrs[0] > lrs[2] > lrs[4]


def test_data_parallel_step_equals_global_batch_step():
  """A step over 2 shards of the global batch (BN, gradients and augmentation keys over a named axis) equals the
  step on the whole batch; `vmap` with an axis name stands in for `pmap` on this one-device host."""
  (train, val), = _batches(1)
  _, _, state, step = _step_setup('exact', augment=True)
  global_state, _ = jax.jit(step)(state, train, val)
  _, _, _, sharded_step = _step_setup('exact', augment=True, axis_name='batch')
  shard = lambda batch: jax.tree.map(lambda x: x.reshape((2, -1) + x.shape[1:]), batch)
  sharded_state, _ = jax.jit(jax.vmap(sharded_step, in_axes=(None, 0, 0), axis_name='batch'))(
      state, shard(train), shard(val))
  # Only the summation order of the means differs: float32 rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7), sharded_state.alphas,
               global_state.alphas)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-7), sharded_state.params,
               global_state.params)


def test_augmentation_depends_on_the_example_not_on_the_device():
  images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 1)).astype(np.uint8)
  key = jax.random.key(3)
  # Jitted: run eagerly, every op of the augmentation would compile on its own.
  whole = jax.jit(data.make_preprocess(MEAN, STD, augment=True))(key, images)
  per_device = jax.jit(jax.vmap(data.make_preprocess(MEAN, STD, augment=True, axis_name='d'), in_axes=(None, 0),
                                axis_name='d'))(key, images.reshape(4, 2, 8, 8, 1))
  np.testing.assert_array_equal(per_device.reshape(whole.shape), whole)
  assert not np.allclose(whole, jax.jit(data.make_preprocess(MEAN, STD, augment=False))(key, images))


def test_preprocess_resizes_then_normalizes():
  images = np.full((2, 8, 8, 1), 51, np.uint8)
  resized = data.make_preprocess(MEAN, STD, image_size=4)(None, images)
  assert resized.shape == (2, 4, 4, 1)
  np.testing.assert_allclose(resized, np.full(resized.shape, (0.2 - MEAN) / STD), rtol=1e-5)  # constant stays


def test_eval_step_uses_running_statistics_and_ignores_padding():
  model, _, state, _ = _step_setup()
  rng = np.random.default_rng(2)
  state = state.replace(batch_stats=jax.tree.map(lambda x: x + rng.uniform(0.5, 1.0, x.shape), state.batch_stats))
  images, labels = _images(rng, 6)
  eval_step = jax.jit(cnn_space.make_eval_step(model, data.make_preprocess(MEAN, STD)))
  pad = lambda x: np.concatenate([x, x[:2]])
  _, sums = eval_step(state, state.alphas, None, (pad(images), pad(labels), np.array([1.] * 6 + [0.] * 2, np.float32)))
  x = (images / 255 - MEAN) / STD
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, x, state.alphas, train=False)
  np.testing.assert_allclose(sums['loss_sum'], optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(),
                             rtol=1e-5)
  assert sums['correct'] == np.sum(np.argmax(logits, -1) == labels) and sums['count'] == 6


def test_alpha_entropy():
  entropy = dynamics.alpha_entropy({'normal': np.zeros((14, 8)), 'reduce': np.eye(14, 8) * 100})
  assert entropy['normal'] == pytest.approx(np.log(8))
  assert entropy['reduce'] == pytest.approx(6 / 14 * np.log(8), rel=1e-6)  # 6 all-zero rows of 14: uniform


# ----------------------------------------------------------------------------------------------------------------
# The search loop, on TinySupernet.


def tiny_config(data_dir, **overrides):
  config = search_quick.get_config()
  config.data.dir = str(data_dir)
  config.data.subset = 0
  config.batch_size = 8  # 48 training images: 6 steps per epoch
  config.num_epochs = 2
  config.hypergradient = 'exact'
  config.log_every_steps = 2
  config.checkpoint_every_minutes = 1e-9  # a time-based checkpoint at every log step
  config.progress = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope='module', autouse=True)
def tiny_supernet():
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(cnn_space, 'SearchNetwork', TinySupernet)
    yield


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp('reference')
  # Checkpoints only at epoch ends here; checkpointing must not change the results.
  state = search.search(tiny_config(data_dir, checkpoint_every_minutes=0.0), workdir)
  return workdir, state


def _epoch_records(workdir):
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl')]


def test_default_relaxation_is_the_supernets_own_softmax(reference_run, data_dir, tmp_path, monkeypatch):
  """The search mixes the ops by its relaxation's weights (config.relaxation, the model taking the weights); the
  default, DARTS's softmax at τ = 1, must search as the supernet mixing by its own softmax of the alphas does (the
  step without a relaxation)."""
  def own_softmax_step(problem, *, relaxation, **kwargs):
    assert relaxation == dynamics.Relaxation()  # the default config's: softmax at τ = 1, soft
    return bilevel_step.make_search_step(problem, relaxation=None, **kwargs)

  monkeypatch.setattr(search, 'make_search_step', own_softmax_step)
  # The supernet softmaxes the alphas itself (the space builds it to take the relaxation's weights).
  monkeypatch.setattr(cnn_space, 'SearchNetwork', lambda **fields: TinySupernet(**{**fields, 'mixing': 'softmax'}))
  own = search.search(tiny_config(data_dir, checkpoint_every_minutes=0.0), tmp_path)
  _, state = reference_run
  # The same float32 values in two programs, which may order them differently: identical here (and ~2e-7 apart
  # across CPU instruction sets). Softmax at τ = 1.05 instead moves the alphas by 1.7e-2 in these 12 steps.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-5), state.alphas, own.alphas)
  assert max(float(np.abs(a).max()) for a in jax.tree.leaves(state.alphas)) > 0.5


def test_search_learns_the_weights_and_moves_the_alphas_off_uniform(reference_run):
  """The quick config's 12 steps: the weights learn the tiny data (the label sets a bright pixel), and its
  architecture optimizer (Adam at 0.1) takes the alphas clearly off their start (1e-3 · N(0, 1): entropy log 8 to
  1e-6). A step that leaves the weights or the alphas unchanged, or moves them the wrong way, fails here."""
  workdir, state = reference_run
  epochs = [r for r in reporting.read_jsonl(workdir / 'metrics.jsonl') if 'epoch' in r]
  # Measured: valid loss 1.65, then 1.35; a uniform guess scores log 10 = 2.30.
  assert epochs[-1]['valid_loss'] < epochs[0]['valid_loss'] < np.log(10) - 0.3
  for kind in ('normal', 'reduce'):
    alphas = np.asarray(state.alphas[kind], np.float64)
    weights = np.exp(alphas - alphas.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    entropy = -np.sum(weights * np.log(weights), -1).mean()
    assert epochs[-1][f'alpha_entropy_{kind}'] == pytest.approx(entropy, rel=1e-6)  # logged from the alphas, float64
    # Measured 1.94 (normal) and 1.92 (reduce) nats, after 2.02 at the first epoch.
    assert entropy < epochs[0][f'alpha_entropy_{kind}'] < np.log(8) - 0.02 and entropy < np.log(8) - 0.1


def test_search_writes_the_run_artifacts(reference_run):
  workdir, state = reference_run
  for name in ('config.json', 'metrics.jsonl', 'genotypes.jsonl', 'genotype.json', 'alphas.npz', 'normal.dot',
               'reduce.dot', 'normal.png', 'reduce.png', 'curves.png'):
    assert (workdir / name).is_file(), name
  assert list((workdir / 'tensorboard').iterdir())
  assert json.loads((workdir / 'config.json').read_text())['hypergradient'] == 'exact'
  alphas = np.load(workdir / 'alphas.npz')
  assert sorted(alphas) == ['normal', 'reduce']
  np.testing.assert_array_equal(alphas['normal'], state.alphas['normal'])
  final = genotypes.derive_genotype(alphas)
  assert genotype_formats.genotype_from_json((workdir / 'genotype.json').read_text()) == final
  lines = reporting.read_jsonl(workdir / 'genotypes.jsonl')
  assert [r['epoch'] for r in lines] == [1, 2] and [r['step'] for r in lines] == [6, 12]
  assert genotype_formats.genotype_from_json(json.dumps(lines[-1]['genotype'])) == final
  records = reporting.read_jsonl(workdir / 'metrics.jsonl')
  epochs = [r for r in records if 'epoch' in r]
  assert [r['step'] for r in epochs] == [6, 12]
  for r in epochs:
    assert {'train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy', 'alpha_entropy_normal',
            'alpha_entropy_reduce', 'lr'} <= r.keys()
    assert 0 <= r['valid_accuracy'] <= 1 and r['alpha_entropy_normal'] < np.log(8)
  steps = [r for r in records if 'epoch' not in r]
  assert [r['step'] for r in steps] == [2, 4, 6, 8, 10, 12]
  assert {'loss', 'accuracy', 'grad_norm', 'arch_grad_norm', 'lr', 'images_per_s'} <= steps[0].keys()
  # Running means over the epoch's 6 steps, logged in 3 intervals of 2.
  assert epochs[0]['train_loss'] == pytest.approx(np.mean([r['loss'] for r in steps[:3]]))
  # What the genotypes cost (darts_jax.cnn.cost): at the search's C=4, 3 cells, 16x16, and the retrain network's
  # C=8, 5 cells at the data's 8x8; in the records, genotypes.jsonl and genotype.json.
  logged = [genotype_formats.genotype_from_json(json.dumps(r['genotype'])) for r in lines]
  for r, line, genotype in zip(epochs, lines, logged):
    at_search = cost.network_cost(genotype, C=4, layers=3, image_size=16, in_channels=1)
    at_eval = cost.network_cost(genotype, C=8, layers=5, image_size=8, in_channels=1)
    assert (r['genotype_params'], r['genotype_macs']) == (at_search.params, at_search.macs)
    assert (r['genotype_params_eval'], r['genotype_macs_eval']) == (at_eval.params, at_eval.macs)
    assert (line['cost']['search']['macs'], line['cost']['eval']['params']) == (at_search.macs, at_eval.params)
    assert 0 < r['expected_macs']  # E[MACs] under the alphas, without a cost term too
  assert json.loads((workdir / 'genotype.json').read_text())['cost'] == lines[-1]['cost']


@pytest.mark.parametrize('method, options', [('unrolled', {'unroll_steps': 2}),
                                             ('implicit_cg', {'implicit_iterations': 2, 'implicit_damping': 1.0}),
                                             ('implicit_neumann', {'implicit_iterations': 2})])
def test_search_runs_the_configured_hypergradient(data_dir, tmp_path, method, options):
  state = search.search(tiny_config(data_dir, hypergradient=method, num_epochs=1, checkpoint_every_minutes=0.0,
                                    **options), tmp_path)
  assert json.loads((tmp_path / 'config.json').read_text())['hypergradient'] == method
  assert int(state.step) == 6 and (tmp_path / 'genotype.json').is_file()
  steps = [r for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'epoch' not in r]
  assert all(0 < r['arch_grad_norm'] < np.inf for r in steps)


def test_bfloat16_search_runs_with_float32_state(data_dir, tmp_path):
  state = search.search(tiny_config(data_dir, num_epochs=1, checkpoint_every_minutes=0.0,
                                    **{'model.dtype': 'bfloat16'}), tmp_path)
  # Parameters, alphas, BN statistics and optimizer states stay float32; only activations are bfloat16.
  leaves = jax.tree.leaves((state.params, state.alphas, state.batch_stats, state.weight_opt_state,
                            state.arch_opt_state))
  assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {np.dtype(np.float32)}
  steps = [r for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'epoch' not in r]
  assert int(state.step) == 6 and all(0 < r['arch_grad_norm'] < np.inf for r in steps)


def test_same_seed_gives_the_same_search(reference_run, data_dir, tmp_path):
  workdir, state = reference_run
  again = search.search(tiny_config(data_dir), tmp_path)
  jax.tree.map(np.testing.assert_array_equal, again.alphas, state.alphas)
  assert (tmp_path / 'genotype.json').read_text() == (workdir / 'genotype.json').read_text()
  other = search.search(tiny_config(data_dir, seed=3, num_epochs=1), tmp_path / 'other_seed')
  assert not np.array_equal(other.alphas['normal'], state.alphas['normal'])


def test_resume_after_interruption_mid_epoch_is_exact(reference_run, data_dir, tmp_path, monkeypatch, caplog):
  workdir, state = reference_run
  save = Checkpointer.save

  def interrupted_save(self, step, *args, **kwargs):
    if step == 10:  # after the step-10 metrics are logged; the latest checkpoint is step 8, mid epoch 2
      raise KeyboardInterrupt
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, 'save', interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    search.search(tiny_config(data_dir), tmp_path)
  assert reporting.read_jsonl(tmp_path / 'metrics.jsonl')[-1]['step'] == 10
  monkeypatch.setattr(Checkpointer, 'save', save)
  with caplog.at_level(logging.INFO):
    resumed = search.search(tiny_config(data_dir), tmp_path)
  assert 'Resuming from step 8 (epoch 1, step 2 of the epoch)' in caplog.text
  jax.tree.map(np.testing.assert_array_equal, resumed.alphas, state.alphas)
  jax.tree.map(np.testing.assert_array_equal, resumed.params, state.params)
  assert _epoch_records(tmp_path) == _epoch_records(workdir)  # logged step 10 dropped and logged again
  assert (tmp_path / 'genotypes.jsonl').read_text() == (workdir / 'genotypes.jsonl').read_text()
  assert (tmp_path / 'alphas.jsonl').read_text() == (workdir / 'alphas.jsonl').read_text()


def test_divergence_stops_without_checkpointing_the_bad_state(data_dir, tmp_path):
  first = search.search(tiny_config(data_dir, num_epochs=1), tmp_path)  # checkpoint at step 6
  (tmp_path / 'config.json').unlink()  # resuming with another configuration is refused otherwise
  with pytest.raises(loop.NonFiniteLossError, match=r'at step 7\b'):
    search.search(tiny_config(data_dir, num_epochs=2, learning_rate=float('inf')), tmp_path)
  with Checkpointer(tmp_path / 'checkpoints') as checkpointer:
    step, restored, _ = checkpointer.restore_latest(first)
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, restored.params, first.params)


def test_earlier_method_spellings_are_accepted_with_a_notice(caplog):
  with caplog.at_level(logging.WARNING):
    assert bilevel_step.method_name('second_order_fd') == 'fd'
    assert bilevel_step.method_name('second_order_exact') == 'exact'
  assert "hypergradient='second_order_fd' is deprecated: write 'fd'" in caplog.text
  assert bilevel_step.method_name('exact') == 'exact' and caplog.text.count('deprecated') == 2


def test_config_errors_are_reported_before_any_work(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"hypergradient 'second_order'.*first_order, fd, exact"):
    search.search(tiny_config(data_dir, hypergradient='second_order'), tmp_path)
  with pytest.raises(ValueError, match=r'unroll_steps \(0\) and implicit_iterations \(5\) must be positive'):
    search.search(tiny_config(data_dir, hypergradient='unrolled', unroll_steps=0), tmp_path)
  with pytest.raises(ValueError, match=r"model.dtype 'float16'; expected one of float32, bfloat16"):
    search.search(tiny_config(data_dir, **{'model.dtype': 'float16'}), tmp_path)
  with pytest.raises(ValueError, match=r"model.depthwise_impl 'cudnn'; expected one of auto, shift, xla"):
    search.search(tiny_config(data_dir, **{'model.depthwise_impl': 'cudnn'}), tmp_path)
  assert not (tmp_path / 'config.json').exists()
  with pytest.raises(ValueError, match='batch_size 4 exceeds the 3 examples'):
    search.search(tiny_config(data_dir, batch_size=4, **{'data.subset': 6}), tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Helpers.


def test_eval_batches_cover_the_split_once_across_processes():
  images, labels = np.arange(10)[:, None], np.arange(10)
  seen, masks = [], []
  for process in range(2):
    for x, y, mask in data.eval_batches(images, labels, 4, process, 2):
      assert x.shape == (2, 1) and np.array_equal(x[:, 0], y)
      seen.append(y[mask > 0])
      masks.append(mask)
  assert sorted(np.concatenate(seen)) == list(range(10)) and np.concatenate(masks).sum() == 10


def test_replicate_and_unreplicate_round_trip():
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'step': jnp.int32(4), 'rng': jax.random.key(1)}
  replicated = parallel.replicate(tree, 'batch')
  assert replicated['w'].shape == (jax.local_device_count(), 2, 3)
  back = parallel.unreplicate(replicated)
  np.testing.assert_array_equal(back['w'], tree['w'])
  assert int(back['step']) == 4
  np.testing.assert_array_equal(jax.random.key_data(back['rng']), jax.random.key_data(tree['rng']))
  sharded = parallel.shard((np.zeros((4, 3), np.uint8),), 'batch')
  assert sharded[0].shape == (jax.local_device_count(), 4 // jax.local_device_count(), 3)


@pytest.mark.parametrize('env, expected', [
    ({}, None),
    ({'SLURM_NTASKS': '1'}, None),
    ({'SLURM_NTASKS': '4'}, {}),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, {}),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, {}),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'},
     {'num_processes': 2, 'process_id': 1}),
])
def test_maybe_initialize_distributed(monkeypatch, env, expected):
  for name in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
               'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  assert parallel.maybe_initialize_distributed() == (expected is not None)
  assert calls == ([] if expected is None else [expected])


@pytest.mark.parametrize('search_space', ['darts', 's3', 's1'])
def test_genotype_weights_run_the_genotype_alone(search_space):
  """The CNN space's one-hot mixing weights of a genotype (what selections score on the supernet) derive that
  genotype again, with exactly its 8 ops per cell at weight 1."""
  config = search_quick.get_config()
  config.model.search_space = search_space
  space = cnn_space.CNNSpace(config)
  width = {'darts': 8, 's3': 3, 's1': 2}[search_space]
  rng = np.random.default_rng(0)
  alphas = {kind: rng.normal(size=(14, width)).astype(np.float32) for kind in ('normal', 'reduce')}
  genotype = space.derive_genotype(alphas)
  weights = space.genotype_weights(genotype, alphas)
  assert all(weights[kind].sum() == 8 and set(np.unique(weights[kind])) == {0, 1} for kind in weights)
  # Ties at weight 1 may list a node's two genes in either order: the same architecture.
  assert dynamics.same_architecture(space.derive_genotype(weights), genotype)


def test_genotype_weights_with_edge_normalisation_close_the_dropped_inputs():
  """With PC-DARTS's edge normalisation, a genotype's mixing weights give β = 1 to the two inputs of every node the
  genotype keeps and 0 to the others (which also stops their bypassed channels), and derive the genotype again."""
  config = search_quick.get_config()
  config.model.partial_channels, config.model.edge_normalization = 2, True
  space = cnn_space.CNNSpace(config)
  rng = np.random.default_rng(1)
  alphas = {kind: rng.normal(size=(14, 8)).astype(np.float32) for kind in ('normal', 'reduce')}
  alphas.update({f'edges_{kind}': [rng.normal(size=(2 + i,)).astype(np.float32) for i in range(4)]
                 for kind in ('normal', 'reduce')})
  genotype = space.derive_genotype(alphas)
  weights = space.genotype_weights(genotype, alphas)
  for kind in ('normal', 'reduce'):
    for node, beta in enumerate(weights[f'edges_{kind}']):
      inputs = {j for _, j in getattr(genotype, kind)[2 * node:2 * node + 2]}
      assert [float(b) for b in beta] == [1.0 if j in inputs else 0.0 for j in range(2 + node)]
  assert dynamics.same_architecture(space.derive_genotype(weights), genotype)
