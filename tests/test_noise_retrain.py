"""RobustDARTS's ``noise`` op (space S4) in the retrained network: the op itself (standard normal noise of the strided
input's shape, replacing the input), its RNG stream (a key per training step, a fixed one in evaluation, one draw per
example of the global batch, a fresh one per scanned cell), its cost (no parameters, no multiply-adds, a timed
latency), the PyTorch interop (no tensors), and an S4 genotype retrained by run_retrain.py on SVHN's files.
"""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from darts_jax import convert, data, export
from darts_jax.cli import evaluate
from darts_jax.cnn import cost, genotype_formats, latency, networks, train_step
from darts_jax.cnn import genotypes
from darts_jax.cnn.genotypes import Genotype
from darts_jax.spaces import cnn_retraining

REPO = Path(__file__).resolve().parents[1]
# An S4 genotype ({noise, sep_conv_3x3}) with noise on cell inputs (stride 2 in reductions) and on a node.
S4 = Genotype(normal=[('noise', 0), ('sep_conv_3x3', 1), ('noise', 2), ('sep_conv_3x3', 0)], normal_concat=[2, 3],
              reduce=[('noise', 0), ('noise', 1)], reduce_concat=[2])
# S4 with `none` (no parameters, no multiply-adds, zeros) in place of every noise.
S4_WITHOUT_NOISE = Genotype(**{k: [(('none' if op == 'noise' else op), i) for op, i in v] if 'concat' not in k else v
                               for k, v in S4._asdict().items()})


@functools.partial(jax.jit, static_argnames=('stride', 'axis_name'))
def _noise(x, key, stride=1, axis_name=None):
  op = networks.make_op('noise', x.shape[-1], stride, axis_name=axis_name)
  return op.apply({}, x, True, rngs={'noise': key})


# ---------------------------------------------------------------------------------------------------------------------
# The op.


def test_noise_is_standard_normal_of_the_strided_shape_whatever_the_input():
  key = jax.random.key(3)
  x = jax.random.uniform(jax.random.key(0), (8, 32, 32, 16))
  noise = _noise(x, key, stride=2)
  assert noise.shape == (8, 16, 16, 16) and noise.dtype == jnp.float32
  # It replaces the input: the same draw for another input of that shape, and for the unstrided one at stride 1.
  np.testing.assert_array_equal(_noise(7 * x + 3, key, stride=2), noise)
  assert _noise(x, key).shape == x.shape
  assert not np.array_equal(_noise(x, jax.random.key(4), stride=2), noise)
  # N(0, 1): for n = 32,768 draws the sample mean has std 1/sqrt(n) = 0.0055 and the sample std 1/sqrt(2n) = 0.0039;
  # the bounds are about 5 of those. The KS test (deterministic for this key) rejects other distributions.
  values = np.asarray(noise, np.float64).ravel()
  assert abs(values.mean()) < 0.03 and abs(values.std() - 1) < 0.02
  assert scipy.stats.kstest(values, 'norm').pvalue > 1e-3
  assert _noise(x.astype(jnp.bfloat16), key).dtype == jnp.bfloat16  # follows the input's dtype


def test_noise_draws_per_example_of_the_global_batch():
  # Two "devices" of 3 examples each draw what one device draws for the 6: the draws do not depend on the split.
  key, x = jax.random.key(5), jnp.zeros((6, 4, 4, 2))
  whole = _noise(x, key)
  split = jax.vmap(lambda part: _noise(part, key, axis_name='batch'), axis_name='batch')(x.reshape(2, 3, 4, 4, 2))
  np.testing.assert_array_equal(split.reshape(whole.shape), whole)
  assert not np.array_equal(whole[0], whole[1])


def test_scanned_cells_draw_their_own_noise():
  # Three identical cells run as one scan; each cell's noise ops must draw afresh (the scan splits the stream).
  channels = 2
  spec = networks.CellSpec((('noise', 0), ('noise', 1)), (2,), channels, False, False, (channels, channels))
  stack = networks.CellStack((spec,) * 3, tap=5)
  x = jnp.ones((2, 4, 4, channels))
  variables = jax.eval_shape(lambda: stack.init(jax.random.key(0), x, x, 0.0, False))
  variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), variables)
  _, state = jax.jit(lambda v: stack.apply(v, x, x, 0.0, False, rngs={'noise': jax.random.key(1)},
                                           capture_intermediates=True, mutable=['intermediates']))(variables)
  cells = state['intermediates']['cells_0_2']
  op0, op1 = cells['op0']['__call__'][0], cells['op1']['__call__'][0]  # (cell, N, H, W, C)
  assert op0.shape == (3, 2, 4, 4, channels)
  for a, b in ((0, 1), (1, 2), (0, 2)):
    assert not np.allclose(op0[a], op0[b]), (a, b)
  assert not np.allclose(op0, op1)


# ---------------------------------------------------------------------------------------------------------------------
# Cost, latency, PyTorch.


def test_noise_counts_no_parameters_no_multiply_adds_and_is_timed(tmp_path):
  assert cost.unit_cost(cost.Unit('noise', 4, 4, 8, 8, 2)) == cost.Cost()
  kw = dict(network='cifar', C=4, layers=3, image_size=8)
  assert cost.network_cost(S4, **kw) == cost.network_cost(S4_WITHOUT_NOISE, **kw)
  x = jnp.zeros((1, 8, 8, 3))
  built = [networks.count_params(jax.eval_shape(lambda: networks.NetworkCIFAR(g, C=4, num_classes=10, layers=3).init(
      jax.random.key(0), x, train=False))['params']) for g in (S4, S4_WITHOUT_NOISE)]
  assert built[0] == built[1] == cost.network_cost(S4, **kw).params
  table = latency.LatencyTable(tmp_path, repeats=1, warmup=1)
  assert table.lookup(cost.Unit('noise', 4, 4, 8, 8, 2)) > 0 and table.measured == 1
  # A latency cost term of an S4 search (one reduction cell of one node) times its noise columns.
  arch = latency.architecture_latency(table, C=2, layers=1, image_size=4, steps=1,
                                      primitives=genotypes.edge_primitives('s4', 1))
  assert arch.tables['reduce'].shape == (2, 2) and np.all(np.isfinite(arch.tables['reduce']))
  timed = {key.rsplit('/', 2)[0] for key in table.entries if key.startswith('noise')}
  assert timed == {cost.Unit('noise', 4, 4, 8, 8, 2).key, cost.Unit('noise', 4, 4, 4, 4, 2).key}  # C doubled


def test_pytorch_interop_has_no_tensors_for_noise():
  # RobustDARTS's NoiseOp holds no tensors: a noise genotype's network converts both ways like any other.
  net = convert.network_for(S4, C=2, num_classes=10, layers=3, auxiliary=False, scan=False)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  leaves, treedef = jax.tree.flatten(shapes)
  variables = jax.tree.unflatten(treedef, [np.arange(s.size, dtype=np.float32).reshape(s.shape) for s in leaves])
  state_dict = convert.to_torch_state_dict(variables, genotype=S4, layers=3, auxiliary=False)
  assert not any('_ops.0.' in k for k in state_dict if k.startswith('cells.1.'))  # the reduction's noise ops
  back = convert.from_torch_state_dict(state_dict, genotype=S4, scan=False)
  jax.tree.map(np.testing.assert_array_equal, back, variables)


# ---------------------------------------------------------------------------------------------------------------------
# Training and evaluation steps.


@pytest.fixture(scope='module')
def tiny_s4():
  """A 3-cell S4 network on 8x8 images, its state and jitted train and eval steps (no augmentation, cutout or drop
  path, so that the noise is the steps' only randomness)."""
  model = networks.NetworkCIFAR(S4, C=2, num_classes=10, layers=3, axis_name=None)
  state = train_step.create_train_state(jax.random.key(0), model, (8, 8, 3), optax.sgd(0.1))
  preprocess = data.make_preprocess(np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
  step = jax.jit(train_step.make_train_step(model, lambda s: 0.1, preprocess, cutout=0, auxiliary_weight=0.0))
  evaluate_step = jax.jit(train_step.make_eval_step(model, preprocess))
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (8, 8, 8, 3), np.uint8), rng.integers(0, 10, 8).astype(np.int32)
  return model, state, step, evaluate_step, preprocess, (images, labels)


def test_training_draws_fresh_noise_every_step(tiny_s4):
  _, state, step, _, _, batch = tiny_s4
  loss = lambda s: float(step(s, batch, jnp.float32(0.0))[1]['loss'])
  first = loss(state)
  assert loss(state) == first  # a function of (seed, step)
  assert loss(state.replace(step=jnp.int32(1))) != first  # another step, other noise
  assert loss(state.replace(rng=jax.random.key(9))) != first  # another seed, other noise


def test_evaluation_is_deterministic(tiny_s4):
  model, state, _, evaluate_step, preprocess, (images, labels) = tiny_s4
  batch = (images, labels, np.ones(len(labels), np.float32))
  sums = [evaluate_step(state, batch) for _ in range(2)]
  assert float(sums[0]['loss_sum']) == float(sums[1]['loss_sum'])
  # The fixed key matters: evaluating with another noise key gives other logits.
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  apply = jax.jit(lambda key: model.apply(variables, preprocess(None, images), train=False, rngs={'noise': key})[0])
  fixed = networks.eval_rngs()['noise']
  np.testing.assert_array_equal(apply(fixed), apply(fixed))
  assert not np.allclose(apply(fixed), apply(jax.random.key(1)))


# ---------------------------------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow  # a CLI retraining (~40 s on 2 CPU cores); the steps' tests above cover the same code in process
def test_s4_genotype_retrains_from_the_cli_on_svhn(tmp_path):
  from test_svhn import _write_svhn  # pylint: disable=import-outside-toplevel
  _write_svhn(tmp_path / 'data', n_train=32, n_test=8)
  genotype_file = tmp_path / 'genotype.json'
  genotype_file.write_text(genotype_formats.genotype_to_json(S4))
  workdir = tmp_path / 'run'
  command = [sys.executable, 'run_retrain.py', '--config', 'configs/retrain_quick.py', '--workdir', str(workdir),
             f'--config.compilation_cache_dir={os.environ.get("JAX_COMPILATION_CACHE_DIR", "")}',
             f'--config.genotype={genotype_file}', '--config.data.name=svhn', f'--config.data.dir={tmp_path / "data"}',
             '--config.data.subset=0', '--config.data.cutout=0', '--config.batch_size=8', '--config.num_epochs=2',
             '--config.max_steps_per_epoch=2', '--config.model.init_channels=2', '--config.model.layers=3',
             '--config.progress=false']
  process = subprocess.run(command, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                           text=True, timeout=900)
  assert process.returncode == 0, process.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert results['dataset'] == 'svhn' and results['steps'] == 4 and np.isfinite(results['test_loss'])
  model = networks.NetworkCIFAR(S4, C=2, num_classes=10, layers=3)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))['params']
  assert results['params'] == networks.count_params(params)
  assert results['macs'] == cost.network_cost(S4_WITHOUT_NOISE, network='cifar', C=2, layers=3).macs
  # The evaluation again, in this process: the same numbers, as the noise's key in evaluation is fixed.
  evaluation = evaluate.evaluate_workdir(workdir)
  assert evaluation['test_accuracy'] == results['test_accuracy']
  np.testing.assert_allclose(evaluation['test_loss'], results['test_loss'], rtol=1e-6)  # same program, float32
  # The exported network draws the evaluation's noise: its logits are the restored network's with the fixed key
  # (float32 rounding of two compilations of one function).
  served = export.load(export.export_workdir(workdir, platforms=('cpu',)))
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), np.uint8)
  restored = cnn_retraining.restore_workdir(workdir)
  spec = data.DATASETS['svhn']
  x = data.make_preprocess(np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32))(None, images)
  logits, _ = restored.model.apply({'params': restored.state.params, 'batch_stats': restored.state.batch_stats}, x,
                                   train=False, rngs=networks.eval_rngs())
  np.testing.assert_allclose(served(images), logits, rtol=1e-5, atol=1e-5)
