"""A small search space, complete, for the tests and as the walk-through of how to add one (docs/architecture.md).

**The space.** A cell of two nodes over the input ``x`` (``data.dim`` features): three edges ``x→h1``, ``h1→h2``,
``x→h2``, each mixing the ops of `OPS` (``zero``, ``identity``, ``tanh``, ``relu`` and ``dense``, a learnt
``dim × dim`` affine map) by its row of mixing weights; the logits are an affine read-out of ``(h1, h2)``. The
alphas are one ``(edges, ops)`` array; the genotype is one op per edge (each row's argmax, ``zero`` excluded), e.g.
``('relu', 'identity', 'relu')``. Retraining trains the discrete cell (each edge its op alone) from scratch.

**The data** (`make_data`, deterministic from ``data.seed``): ``x ~ N(0, I)`` and the label is whether
``Σ_j |x_j|`` exceeds its median (``dim · sqrt(2/π)`` in expectation). The label is an even function of ``x``, so
the odd ops (identity, tanh, the dense map's linear part) carry no information about it to the affine read-out of
the nodes: only ``relu(x) = (x + |x|) / 2`` does. A search should therefore give the edge ``x→h1`` the op ``relu``
(tests/test_example_space.py checks it); once ``h1`` brings ``relu(x)`` to the read-out, the other two edges have
no single best op.

**What the tasks get** (`ExampleSpace`, a `darts_jax.spaces.SearchSpace`): the search's `SearchSetup` (batches from
`darts_jax.data.epoch_batches`, the `BilevelProblem` whose loss takes the mixing weights, the evaluation, the
validation loss of the Hessian diagnostics), the genotype rule, formats (JSON, a known name, a workdir) and diagram
(a Graphviz ``.dot`` text, no Graphviz needed), the diagnostics (`darts_jax.dynamics.diagnostics`: entropy and
largest weight of each edge's mixing weights, stability of the genotype), the genotype's parameter count as its
cost, and the retraining (`Retraining`). Select it with ``config.space = 'example_space:ExampleSpace'`` (this
directory on the Python path); `search_config` and `retrain_config` are its configs.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from darts_jax import data
from darts_jax.bilevel.step import BilevelProblem, SearchState
from darts_jax.dynamics import diagnostics
from darts_jax.spaces import Retraining, SearchSpace
from darts_jax.spaces.base import SearchSetup
from darts_jax.training import loop, optimizers, parallel
from darts_jax.training.parallel import AXIS_NAME

PyTree = Any
Genotype = tuple[str, ...]

OPS = ('zero', 'identity', 'tanh', 'relu', 'dense')
"""The candidate ops of every edge, in the alphas' column order."""
EDGES = (('x', 'h1'), ('h1', 'h2'), ('x', 'h2'))
"""The edges (input node, output node), in the alphas' row order."""
NODES = ('h1', 'h2')
NUM_CLASSES = 2
GENOTYPES = {'RELU': ('relu', 'relu', 'relu'), 'LINEAR': ('identity', 'identity', 'identity')}
"""Known genotypes by name (``config.genotype = 'RELU'``)."""
GENOTYPE_FILE = 'genotype.json'
CELL_FILE = 'cell.dot'


def search_config() -> ml_collections.ConfigDict:
  """A search of a few seconds: the keys `darts_jax.tasks.search` reads (configs/search_cifar10.py's names) and the
  space's own (``data``, ``model``)."""
  config = ml_collections.ConfigDict()
  config.space = 'example_space:ExampleSpace'
  config.seed = 0
  config.num_seeds = 1
  config.num_epochs = 4
  config.batch_size = 32
  config.hypergradient = 'first_order'
  config.fd_epsilon = 0.01
  config.second_order_impl = 'auto'
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  config.arch_learning_rate = 0.1  # Adam moves an alpha by about this per step: a few dozen steps decide
  config.arch_weight_decay = 0.0
  config.data = ml_collections.ConfigDict({'seed': 0, 'dim': 8, 'train_size': 512, 'valid_size': 512})
  config.relaxation = ml_collections.ConfigDict({
      'name': 'softmax', 'hard': False, 'temperature': 1.0, 'final_temperature': 1.0,
      'temperature_schedule': 'constant', 'noise_scale': 0.0, 'concentration': 'elu'})
  config.regularizer = ml_collections.ConfigDict({
      'entropy': 0.0, 'zero_one': 0.0, 'beta_decay': 0.0, 'schedule': 'constant', 'random_smoothing': 0.0,
      'random_smoothing_start': 0.03})
  config.diagnostics = ml_collections.ConfigDict({'hessian_batches': 2, 'hessian_iterations': 0,
                                                  'hessian_method': 'exact'})
  config.early_stopping = ml_collections.ConfigDict({'rule': 'none', 'window': 5, 'factor': 1.3, 'start_epoch': 10,
                                                     'max_skip': 2, 'patience': 10})
  config.log_every_steps = 4
  config.checkpoint_every_minutes = 0.0
  config.keep_checkpoints = 3
  config.progress = False
  config.compilation_cache_dir = ''  # JAX's own setting
  return config


def retrain_config() -> ml_collections.ConfigDict:
  """A retraining of a few seconds: `darts_jax.tasks.retrain`'s keys and the space's."""
  config = ml_collections.ConfigDict()
  config.space = 'example_space:ExampleSpace'
  config.genotype = 'RELU'
  config.seed = 0
  config.num_epochs = 3
  config.batch_size = 32
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 3e-4
  config.grad_clip = 5.0
  config.data = ml_collections.ConfigDict({'seed': 0, 'dim': 8, 'train_size': 512, 'test_size': 512})
  config.log_every_steps = 8
  config.checkpoint_every_minutes = 0.0
  config.keep_checkpoints = 3
  config.progress = False
  config.compilation_cache_dir = ''
  return config


# ---------------------------------------------------------------------------------------------------------------------
# The data and the network.


def make_data(seed: int, size: int, dim: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(x float32 (size, dim), labels int32 (size,))`` of split `stream`: ``x ~ N(0, I)``, the label whether
  ``Σ_j |x_j|`` exceeds its median ``dim · sqrt(2/π)`` (module docstring); a function of (seed, stream) only."""
  x = np.random.default_rng([seed, stream]).normal(size=(size, dim)).astype(np.float32)
  labels = (np.abs(x).sum(-1) > dim * np.sqrt(2 / np.pi)).astype(np.int32)
  return x, labels


def _op(name: str, params: PyTree, h: jax.Array) -> jax.Array:
  if name == 'zero':
    return jnp.zeros_like(h)
  if name == 'identity':
    return h
  if name == 'tanh':
    return jnp.tanh(h)
  if name == 'relu':
    return jax.nn.relu(h)
  return h @ params['kernel'] + params['bias']  # dense


def _dense_init(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
  return {'kernel': jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in), 'bias': jnp.zeros((fan_out,))}


def init_params(key: jax.Array, dim: int, genotype: Genotype | None = None) -> dict[str, PyTree]:
  """The weights: a dense map per edge that can take it (every edge in the supernet; in the `genotype`'s network,
  the edges whose op is ``dense``) and the read-out."""
  keys = jax.random.split(key, len(EDGES) + 1)
  edges = {f'edge_{e}': _dense_init(keys[e], dim, dim) for e in range(len(EDGES))
           if genotype is None or genotype[e] == 'dense'}
  return {'edges': edges, 'readout': _dense_init(keys[-1], len(NODES) * dim, NUM_CLASSES)}


def supernet_logits(params: PyTree, weights: jax.Array, x: jax.Array) -> jax.Array:
  """The supernet: every edge ``Σ_k weights[e, k] · op_k(input)``, every node the sum of its edges."""
  nodes = {'x': x}
  for node in NODES:
    nodes[node] = sum(sum(weights[e, k] * _op(name, params['edges'].get(f'edge_{e}'), nodes[src])
                          for k, name in enumerate(OPS))
                      for e, (src, dst) in enumerate(EDGES) if dst == node)
  return _readout(params, nodes)


def _readout(params: PyTree, nodes: dict[str, jax.Array]) -> jax.Array:
  """The logits: an affine map of the nodes' concatenation (as DARTS's cell output)."""
  return _op('dense', params['readout'], jnp.concatenate([nodes[node] for node in NODES], -1))


def genotype_logits(params: PyTree, genotype: Genotype, x: jax.Array) -> jax.Array:
  """The discrete network of `genotype`: every edge its one op."""
  nodes = {'x': x}
  for node in NODES:
    nodes[node] = sum(_op(genotype[e], params['edges'].get(f'edge_{e}'), nodes[src])
                      for e, (src, dst) in enumerate(EDGES) if dst == node)
  return _readout(params, nodes)


def _sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """Masked sums of an evaluation batch: ``loss_sum``, ``correct``, ``count``."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
          'count': jnp.sum(mask)}


def _psum(tree: PyTree, axis_name: Any) -> PyTree:
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


# ---------------------------------------------------------------------------------------------------------------------
# The search's pieces.


def search_problem(*, learning_rate: float, momentum: float, weight_decay: float, axis_name: Any) -> BilevelProblem:
  """The bilevel step's space side: the cross-entropy of the supernet mixed by the step's mixing weights, batches
  ``(x, labels)`` used as they come, SGD's constant learning rate, momentum and decay for the virtual step."""
  def loss(params, batch_stats, weights, batch, weight_step):
    del weight_step  # every pass is the cross-entropy
    logits = supernet_logits(params, weights, batch[0])
    value = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
    return value, {'logits': logits, 'batch_stats': batch_stats}  # no BN: the statistics pass through

  return BilevelProblem(
      loss=loss, prepare=lambda state, train, val: (train, val),
      learning_rate=lambda step, train: jnp.asarray(learning_rate, train[0].dtype),
      metrics=lambda train, aux: {'accuracy': jnp.mean(jnp.argmax(aux['logits'], -1) == train[1])},
      momentum=momentum, weight_decay=weight_decay, axis_name=axis_name)


def create_search_state(key: jax.Array, dim: int, weight_tx: optax.GradientTransformation,
                        arch_tx: optax.GradientTransformation) -> SearchState:
  """Weights as `init_params`, alphas ``1e-3·N(0, 1)`` (DARTS's), both optimizers' states."""
  params_key, alphas_key, rng = jax.random.split(key, 3)
  params = init_params(params_key, dim)
  alphas = 1e-3 * jax.random.normal(alphas_key, (len(EDGES), len(OPS)))
  return SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, alphas=alphas,
                     weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas), rng=rng, carry=(),
                     weight_tx=weight_tx, arch_tx=arch_tx)


# ---------------------------------------------------------------------------------------------------------------------
# The retraining's state and step.


class TrainState(flax.struct.PyTreeNode):
  """The retraining's state: steps taken, weights, the optimizer's state."""
  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_train_step(genotype: Genotype, axis_name: Any = AXIS_NAME
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """``step(state, (x, labels)) -> (state, metrics)``: one SGD step of the discrete network, data-parallel."""
  def pmean(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    x, labels = batch

    def loss_fn(params):
      logits = genotype_logits(params, genotype, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = pmean(grads)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = pmean({'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)})
    metrics['grad_norm'] = optax.tree.norm(grads)
    metrics['finite'] = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def num_params(genotype: Genotype, dim: int) -> int:
  """The discrete network's parameter count: a ``dim × dim`` map and bias per ``dense`` edge, the read-out."""
  return sum(op == 'dense' for op in genotype) * (dim + 1) * dim + (dim + 1) * NUM_CLASSES


# ---------------------------------------------------------------------------------------------------------------------
# The space.


class ExampleSpace(SearchSpace):
  """The two-node cell of this module behind `SearchSpace` (module docstring)."""

  name: ClassVar[str] = 'example'

  # ---- the search

  def check_search_config(self) -> None:
    if 'relaxation' not in self.config:
      # Without it the step would mix the ops by the raw alphas: this network takes mixing weights.
      raise ValueError('space example mixes its ops by a relaxation\'s weights: set config.relaxation.')
    _check_data(self.config)

  def search_setup(self, workdir: Path, axis_name: Any) -> SearchSetup:
    del workdir  # no files of its own
    config, d = self.config, self.config.data
    x, labels = make_data(d.seed, d.train_size + d.valid_size, d.dim)
    (train_x, valid_x), (train_labels, valid_labels) = (np.split(a, [d.train_size]) for a in (x, labels))
    batch_size = config.batch_size
    steps_per_epoch = data.num_batches(d.train_size, batch_size)
    weight_tx = optimizers.weight_optimizer(config.learning_rate, momentum=config.momentum,
                                            weight_decay=config.weight_decay, grad_clip=config.grad_clip)
    arch_tx = optimizers.arch_optimizer(config.arch_learning_rate, weight_decay=config.arch_weight_decay)
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())

    def batches(epoch: int, start: int, seed: int) -> Iterator[tuple[Any, Any]]:
      """(train, validation) batches from two separately shuffled streams of the two halves."""
      return zip(*(data.epoch_batches(inputs, targets, batch_size=batch_size, seed=seed, epoch=epoch, stream=stream,
                                      start_step=start, **where)
                   for stream, (inputs, targets) in enumerate([(train_x, train_labels), (valid_x, valid_labels)])))

    def eval_step(state: SearchState, weights: jax.Array, carry: None, batch):
      inputs, targets, mask = batch
      return carry, _psum(_sums(supernet_logits(state.params, weights, inputs), targets, mask), axis_name)

    def validation_loss(params, batch_stats, weights, batches):
      """The mean cross-entropy over fixed batches (x (B, N, dim), labels (B, N): N batches of B)."""
      del batch_stats
      logits = supernet_logits(params, weights, batches[0])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batches[1]).mean()

    def hessian_batches(count: int):
      full = [(inputs, targets) for inputs, targets, mask in data.eval_batches(valid_x, valid_labels, batch_size,
                                                                                **where) if mask.all()][:count]
      return tuple(np.stack(arrays, axis=1) for arrays in zip(*full))

    return SearchSetup(
        summary=f'example: {d.train_size} / {d.valid_size} examples of {d.dim} features, {steps_per_epoch} steps',
        steps_per_epoch=steps_per_epoch, batches=batches,
        init=jax.jit(lambda key: create_search_state(key, d.dim, weight_tx, arch_tx)),
        problem=search_problem(learning_rate=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay, axis_name=axis_name),
        eval_step=eval_step, eval_carry=None,
        eval_batches=lambda: data.eval_batches(valid_x, valid_labels, batch_size, **where),
        eval_entries=lambda totals: {'valid_loss': float(totals['loss_sum'] / totals['count']),
                                     'valid_accuracy': float(totals['correct'] / totals['count'])},
        validation_loss=validation_loss, hessian_batches=hessian_batches,
        learning_rate=lambda step: config.learning_rate)

  def derive_genotype(self, alphas: PyTree, weights: PyTree | None = None) -> Genotype:
    strength = np.asarray(alphas if weights is None else weights, np.float64)[:, 1:]  # 'zero' is never chosen
    return tuple(OPS[1 + k] for k in np.argmax(strength, -1))

  def alphas_record(self, alphas: PyTree) -> dict[str, Any]:
    return {'alphas': np.asarray(alphas).tolist()}

  def alphas_from_record(self, record: dict[str, Any]) -> PyTree:
    return np.asarray(record['alphas'], np.float32)

  def diagnostics(self, alphas: PyTree, history: list[Any], weights: PyTree | None) -> dict[str, float]:
    if weights is None:
      entropy, largest = diagnostics.alpha_entropy({'': alphas}), diagnostics.alpha_max_weight({'': alphas})
    else:
      entropy, largest = diagnostics.weights_entropy({'': weights}), diagnostics.weights_max({'': weights})
    entries = {'alpha_entropy': entropy[''], 'alpha_max_weight': largest['']}
    if len(history) > 1:  # the fraction of edges whose op the last epoch kept
      entries['stability'] = float(np.mean([a == b for a, b in zip(history[-2], history[-1])]))
    # For how many epochs the genotype has not changed (the 'stability' early-stopping rule reads it).
    unchanged = 0
    while unchanged + 1 < len(history) and history[-2 - unchanged] == history[-1]:
      unchanged += 1
    entries['unchanged_epochs'] = unchanged
    return entries

  def genotype_record(self, genotype: Genotype) -> dict[str, Any]:
    return {'params': num_params(genotype, self.config.data.dim)}

  def genotype_entries(self, genotype: Genotype) -> dict[str, Any]:
    return {'genotype_params': num_params(genotype, self.config.data.dim)}

  def genotype_weights(self, genotype: Genotype, alphas: PyTree) -> jax.Array:
    return np.eye(len(OPS), dtype=np.asarray(alphas).dtype)[[OPS.index(op) for op in genotype]]

  def genotype_text(self, genotype: Genotype) -> str:
    return ', '.join(f'{src}->{dst}: {op}' for (src, dst), op in zip(EDGES, genotype))

  def write_search_artifacts(self, workdir: Path, alphas: PyTree, genotype: Genotype) -> None:
    np.savez(workdir / 'alphas.npz', alphas=alphas)
    self.plot_genotype(genotype, f'{workdir}/')

  # ---- genotypes

  def load_genotype(self, spec: str) -> Genotype:
    """A known name (`GENOTYPES`), a search or retrain workdir, a ``genotype.json`` or its JSON text."""
    if spec in GENOTYPES:
      return GENOTYPES[spec]
    path = Path(spec).expanduser()
    if path.is_dir():
      path = path / GENOTYPE_FILE
      if not path.is_file():
        raise FileNotFoundError(f'{path} does not exist: pass a search workdir after its end, or a genotype.')
    text = path.read_text() if path.is_file() else spec
    try:
      ops = json.loads(text)['ops']
    except (ValueError, KeyError, TypeError):
      raise ValueError(f'genotype {spec!r} is neither one of {", ".join(GENOTYPES)}, a workdir, a genotype.json '
                       'nor JSON like {"ops": ["relu", "identity", "tanh"]}.') from None
    if not (isinstance(ops, list) and len(ops) == len(EDGES) and all(op in OPS[1:] for op in ops)):
      raise ValueError(f'genotype {spec!r}: "ops" must list {len(EDGES)} ops of {", ".join(OPS[1:])}.')
    return tuple(ops)

  def genotype_to_json(self, genotype: Genotype) -> dict[str, Any]:
    return {'ops': list(genotype)}

  def plot_genotype(self, genotype: Genotype, prefix: str) -> None:
    edges = ''.join(f'  {src} -> {dst} [label="{op}"];\n' for (src, dst), op in zip(EDGES, genotype))
    Path(f'{prefix}{CELL_FILE}').write_text(f'digraph cell {{\n  rankdir=LR;\n{edges}  h2 -> logits;\n}}\n')

  # ---- retraining

  def check_retrain_config(self) -> None:
    parallel.check_batch_size(self.config.batch_size)
    if self.config.num_epochs <= 0:
      raise ValueError(f'num_epochs must be positive, got {self.config.num_epochs}.')
    _check_data(self.config)

  def retraining(self, workdir: Path, genotype: Genotype) -> Retraining:
    """Trains the discrete cell on the search's examples (both halves) and tests it on held-out ones (stream 1)."""
    del workdir  # no files of its own
    config, d = self.config, self.config.data
    train_x, train_labels = make_data(d.seed, d.train_size, d.dim)
    test_x, test_labels = make_data(d.seed, d.test_size, d.dim, stream=1)
    batch_size = config.batch_size
    tx = optimizers.weight_optimizer(config.learning_rate, momentum=config.momentum,
                                     weight_decay=config.weight_decay, grad_clip=config.grad_clip)

    @jax.jit
    def init(key):
      params = init_params(key, d.dim, genotype)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)

    impl = config.get('parallel_impl', parallel.DEFAULT_IMPL)
    p_step = parallel.data_parallel(make_train_step(genotype), AXIS_NAME, impl=impl, donate_argnums=(0,))

    def eval_step(state: TrainState, batch):
      inputs, targets, mask = batch
      return _psum(_sums(genotype_logits(state.params, genotype, inputs), targets, mask), AXIS_NAME)

    p_eval = parallel.data_parallel(eval_step, AXIS_NAME, impl=impl)

    def batches(epoch: int, start: int) -> Iterator[Any]:
      return (parallel.shard(batch, AXIS_NAME) for batch in data.epoch_batches(
          train_x, train_labels, batch_size=batch_size, seed=config.seed, epoch=epoch, start_step=start,
          process_index=jax.process_index(), process_count=jax.process_count()))

    def evaluate(epoch: int, step: int, r_state: TrainState, state: TrainState) -> dict[str, Any]:
      del epoch, step, state
      test = loop.evaluate(p_eval, r_state, test_x, test_labels, batch_size, AXIS_NAME)
      return {'test_loss': test['loss'], 'test_accuracy': test['accuracy']}

    def results(outcome: loop.Outcome) -> dict[str, Any]:
      return {'test_accuracy': outcome.record['test_accuracy'], 'test_loss': outcome.record['test_loss'],
              'params': num_params(genotype, d.dim)}

    task = loop.Task(state=init(jax.random.key(config.seed)),
                     step=lambda r_state, batch, epoch: p_step(r_state, batch), batches=batches,
                     steps_per_epoch=data.num_batches(d.train_size, batch_size), evaluate=evaluate)
    return Retraining(task=task, results=results)


def _check_data(config: ml_collections.ConfigDict) -> None:
  sizes = {k: v for k, v in config.data.items() if k.endswith('_size')}
  if config.data.dim < 1 or min(sizes.values()) < config.batch_size:
    raise ValueError(f'data.dim ({config.data.dim}) must be positive and every data size ({sizes}) at least '
                     f'batch_size ({config.batch_size}).')
