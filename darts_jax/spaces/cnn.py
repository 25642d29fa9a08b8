"""DARTS's CNN space (cells of 8 operations on CIFAR-10, Fashion-MNIST, ImageNet) behind `SearchSpace`.

The search trains `darts_jax.cnn.supernet.SearchNetwork` (C channels, ``model.layers`` cells, a normal and a
reduction cell of ``model.steps`` nodes) on the two halves of the training set (`data.search_split`), the weights by
SGD with momentum on a per-epoch cosine schedule, the alphas by Adam (held for ``arch_warmup_epochs``). Besides the
common records its epoch records hold the diagnostics per cell type (``_normal``/``_reduce``), ``skip_connect_normal``,
the parameters and multiply-adds of the derived genotype's network at the search's size and at the retrain
network's (``genotype_params``, ``genotype_macs``, ``..._eval``) and the expected cost of the alphas' choice
(``expected_<cost.metric>``, `darts_jax.cnn.cost`); its workdir ``cost_model.json`` (the cost of every choice),
``alphas.npz`` (``normal``, ``reduce``), the cell diagrams and the dynamics plots.

The supernet's variants are ``model`` keys: ``search_space`` (``darts``, RobustDARTS's ``s1``..``s4``) or
``edge_ops`` (explicit per-edge op lists, JSON): the ops of every edge (`edge_ops`, the one source of them for the
supernet, the genotype rule and the cost), ``skip_dropout`` (P-DARTS's dropout on the identity ops in training passes,
its rate per step `relaxations.skip_dropout_schedule`), ``partial_channels`` and ``edge_normalization``
(PC-DARTS; the edge parameters are alphas ``edges_normal``/``edges_reduce``, one list per node, which the
relaxation maps like the ops' rows and every hypergradient differentiates), ``aux_skip_weight`` and
``aux_skip_decay`` (DARTS-: the weight's schedule, `aux_skip_schedule`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from darts_jax import data
from darts_jax.analysis import plots as run_plots
from darts_jax.bilevel.step import BilevelProblem, SearchState
from darts_jax.cnn import cost, genotype_formats, genotypes, ops, plots
from darts_jax.cnn.supernet import DTYPES, SearchNetwork, init_alphas, supernet_edge_ops
from darts_jax.data.augment import Preprocess
from darts_jax.dynamics import diagnostics, early_stopping, relaxations
from darts_jax.spaces.base import Retraining, SearchSetup, SearchSpace
from darts_jax.spaces import cnn_retraining
from darts_jax.training import optimizers, reporting

PyTree = Any
COST_MODEL_FILE = 'cost_model.json'


AUX_SKIP_DECAYS = ('linear', 'cosine', 'constant')
"""How DARTS-'s auxiliary skip weight falls from ``model.aux_skip_weight`` over the epochs (DARTS-'s schedules)."""
# The RNG stream of RobustDARTS's noise op in the evaluation and the Hessian: fixed, so that both measure one function.
_FIXED_NOISE_SEED = 0


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def aux_skip_schedule(initial: float, decay: str, num_epochs: int, steps_per_epoch: int) -> optax.Schedule:
  """DARTS-'s auxiliary skip weight at a step: constant within an epoch, at epoch e ``initial · (1 - e/E)``
  (``'linear'``, the paper's), ``initial · (1 + cos(π e/E)) / 2`` (``'cosine'``) or ``initial`` (``'constant'``), E the
  number of epochs (DARTS-'s ``DecayScheduler`` with its defaults: the last epoch's weight is ``initial / E``)."""
  if decay not in AUX_SKIP_DECAYS:
    raise ValueError(f'Unknown aux skip decay {decay!r}; expected one of {", ".join(AUX_SKIP_DECAYS)}.')

  def schedule(step):
    progress = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32) / num_epochs
    if decay == 'linear':
      return initial * (1 - progress)
    if decay == 'cosine':
      return initial * (1 + jnp.cos(jnp.pi * progress)) / 2
    return jnp.full((), initial, jnp.float32)

  return schedule


EDGE_OPS = genotypes.PRIMITIVES + genotypes.SEARCH_ONLY_PRIMITIVES
"""The op names ``model.edge_ops`` may list."""


def edge_ops(model_config: ml_collections.ConfigDict) -> dict[str, tuple[tuple[str, ...], ...]]:
  """The ops of every edge of the configured supernet per cell type, the columns of its alphas: ``model.edge_ops``
  (JSON ``{"normal": [[ops of edge 0], ...], "reduce": [...]}``) where set, else ``model.search_space``'s
  (`genotypes.edge_primitives`). The one source of the op lists for the supernet, the genotype rule and the cost.

  Raises:
    ValueError: (one line) edge_ops beside a search space other than darts, invalid JSON, an unknown or repeated op,
      an edge of ``none`` alone, a wrong number of edges, or edges with different numbers of ops.
  """
  spec, space, steps = model_config.get('edge_ops', ''), model_config.get('search_space', 'darts'), model_config.steps
  if not spec:
    return genotypes.edge_primitives(space, steps)
  if space != 'darts':
    raise ValueError(f'model.edge_ops replaces the op sets of model.search_space: set one of them (search_space is '
                     f'{space!r}).')
  try:
    parsed = json.loads(spec)
  except json.JSONDecodeError as e:
    raise ValueError(f'model.edge_ops is not valid JSON ({e}).') from None
  if not isinstance(parsed, dict) or sorted(parsed) != sorted(genotypes.CELL_TYPES):
    raise ValueError('model.edge_ops must be a JSON object {"normal": [[ops of edge 0], ...], "reduce": [...]}.')
  count = genotypes.num_edges(steps)
  ops = {}
  for kind in genotypes.CELL_TYPES:
    cell = parsed[kind]
    if not isinstance(cell, list) or len(cell) != count or not all(isinstance(edge, list) for edge in cell):
      raise ValueError(f'model.edge_ops["{kind}"] must hold one list of ops per edge: {count} for cells of {steps} '
                       f'nodes, got {len(cell) if isinstance(cell, list) else type(cell).__name__}.')
    for e, edge in enumerate(cell):
      unknown = [op for op in edge if op not in EDGE_OPS]
      if unknown:
        raise ValueError(f'model.edge_ops["{kind}"][{e}]: unknown op {unknown[0]!r}; expected ops of '
                         f'{", ".join(EDGE_OPS)}.')
      if len(set(edge)) != len(edge) or not set(edge) - {'none'}:
        raise ValueError(f'model.edge_ops["{kind}"][{e}] ({edge}) must name each op once and one other than none.')
    ops[kind] = tuple(tuple(edge) for edge in cell)
  sizes = sorted({len(edge) for cell in ops.values() for edge in cell})
  if len(sizes) > 1:
    raise ValueError(f'model.edge_ops: every edge needs the same number of ops (the alphas are one (edges, ops) array '
                     f'per cell type), got {", ".join(map(str, sizes))}.')
  return ops


def _uses_noise(model: SearchNetwork) -> bool:
  """Whether the supernet has RobustDARTS's noise op (it then needs a ``'noise'`` RNG stream)."""
  return any('noise' in ops for edges in supernet_edge_ops(model).values() for ops in edges)


def _apply_options(model: SearchNetwork, extras: dict[str, Any] | None) -> dict[str, Any]:
  """The keyword arguments of ``model.apply`` for a pass with a prepared batch's `extras` (None: evaluation or the
  Hessian, whose noise stream is fixed, whose auxiliary skip weight is the network's stored one, and which drop
  nothing)."""
  options = {}
  if _uses_noise(model):
    options['rngs'] = {'noise': jax.random.key(_FIXED_NOISE_SEED) if extras is None else extras['noise']}
  if extras is not None and 'aux_skip_weight' in extras:
    options['aux_skip_weight'] = extras['aux_skip_weight']
  if extras is not None and 'dropout' in extras:
    options['skip_dropout_rate'], options['dropout_key'] = extras['skip_dropout_rate'], extras['dropout']
  return options


def create_search_state(rng: jax.Array, model: SearchNetwork, image_shape: tuple[int, int, int],
                        weight_tx: optax.GradientTransformation, arch_tx: optax.GradientTransformation,
                        aux_skip_weight: float = 1.0) -> SearchState:
  """Initialises weights (PyTorch's default init), alphas (``1e-3·N(0, 1)``, a column per op of the model's edges,
  `supernet_edge_ops`, with its edge normalisation's parameters) and both optimizers; a model with DARTS-'s auxiliary
  skip stores `aux_skip_weight` as its weight.

  Args:
    rng: PRNG key; split into the weights', the alphas' and the augmentation keys.
    model: the supernet.
    image_shape: (H, W, C) of one input image.
    weight_tx: e.g. `training.optimizers.weight_optimizer`.
    arch_tx: e.g. `darts_jax.training.optimizers.arch_optimizer`.
  """

  num_ops = len(supernet_edge_ops(model)['normal'][0])
  options = _apply_options(model, None)
  noise_rngs = options.pop('rngs', {})
  if getattr(model, 'aux_skip', False):
    options['aux_skip_weight'] = aux_skip_weight

  @jax.jit  # One compilation; eager Linen init of the supernet would dispatch thousands of small ops.
  def init(rng):
    # At XLA's default optimisation level: at level 0 the weights round differently (by an ulp).
    params_key, alphas_key, augment_key = jax.random.split(rng, 3)
    alphas = init_alphas(alphas_key, steps=model.steps, num_ops=num_ops,
                         edge_normalization=getattr(model, 'edge_normalization', False))
    # Weights are drawn with `ops.INIT_PRNG`: one fused kernel per parameter tensor to compile (docs/results.md).
    rngs = {'params': ops.init_key(params_key), **noise_rngs}
    variables = model.init(rngs, jnp.zeros((1,) + tuple(image_shape), jnp.float32), alphas, train=False, **options)
    params = variables['params']
    return SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                       alphas=alphas, weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas),
                       rng=augment_key, carry=(), weight_tx=weight_tx, arch_tx=arch_tx)

  return init(rng)


def search_problem(model: SearchNetwork, schedule: optax.Schedule, preprocess: Preprocess, *, momentum: float = 0.9,
                   weight_decay: float = 3e-4, aux_skip: optax.Schedule | None = None,
                   skip_dropout: optax.Schedule | None = None) -> BilevelProblem:
  """The CNN space's side of the bilevel step for batches ``(uint8 images (N, H, W, C), int32 labels (N,))``: the
  cross-entropy of every pass, both batches preprocessed with keys from ``(state.rng, state.step)`` (with CIFAR
  augmentation, validation batches are augmented too: the original draws them from the training set with the
  training transform), the learning rate `schedule` of the weight optimizer (SGD with `momentum` and
  `weight_decay`, `training.optimizers.weight_optimizer`), under ``model.axis_name``.

  The supernet's variants take their inputs from the prepared batches, a third entry beside images and labels:
  DARTS-'s auxiliary skip weight of the step (the `aux_skip` schedule), P-DARTS's skip dropout rate of the step (the
  `skip_dropout` schedule) with its dropout key, and the key of RobustDARTS's noise op, keys one per batch and step,
  so that every pass over a batch sees the same noise and dropout masks and the hypergradient differentiates one
  function."""
  def prepare(state, train_batch, val_batch):
    base = jax.random.fold_in(state.rng, state.step)
    train_key, val_key = jax.random.split(base)
    train = (preprocess(train_key, train_batch[0]), train_batch[1])
    val = (preprocess(val_key, val_batch[0]), val_batch[1])
    if aux_skip is None and skip_dropout is None and not _uses_noise(model):
      return train, val
    extras = [{}, {}]
    if aux_skip is not None:
      for entry in extras:
        entry['aux_skip_weight'] = aux_skip(state.step)
    if _uses_noise(model):  # a stream of its own beside the augmentation's and the relaxation's (fold_in 1)
      for entry, key in zip(extras, jax.random.split(jax.random.fold_in(base, 3))):
        entry['noise'] = key
    if skip_dropout is not None:  # and another for the dropout masks
      for entry, key in zip(extras, jax.random.split(jax.random.fold_in(base, 4))):
        entry['skip_dropout_rate'], entry['dropout'] = skip_dropout(state.step), key
    return train + (extras[0],), val + (extras[1],)

  def loss(params, batch_stats, weights, batch, weight_step):
    del weight_step  # every pass is the cross-entropy
    extras = batch[2] if len(batch) > 2 else {}
    options = _apply_options(model, extras) if extras else {}
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch[0], weights, train=True,
                                  mutable=['batch_stats'], **options)
    return _cross_entropy(logits, batch[1]), {'logits': logits, 'batch_stats': updates['batch_stats']}

  return BilevelProblem(
      loss=loss, prepare=prepare, learning_rate=lambda step, train: schedule(step),
      metrics=lambda train, aux: {'accuracy': jnp.mean(jnp.argmax(aux['logits'], -1) == train[1])},
      momentum=momentum, weight_decay=weight_decay, axis_name=model.axis_name)


def make_eval_step(model: SearchNetwork, preprocess: Preprocess
                   ) -> Callable[[SearchState, PyTree, None, tuple[jax.Array, ...]], tuple[None, dict[str, jax.Array]]]:
  """``eval_step(state, weights, None, (images, labels, mask)) -> (None, sums)``: the supernet with its ops mixed by
  ``weights`` as the original's ``infer`` (``model.eval()``: BN with the running statistics), on unaugmented images
  prepared by `preprocess`; ``mask`` (1 for real examples) lets the last batch be padded. ``sums``
  (``loss_sum``, ``correct``, ``count``) are summed over ``model.axis_name``."""
  axis_name = model.axis_name

  def eval_step(state: SearchState, weights: PyTree, carry: None, batch):
    images, labels, mask = batch
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, preprocess(None, images), weights,
                         train=False, **_apply_options(model, None))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            'count': jnp.sum(mask)}
    return carry, (sums if axis_name is None else jax.lax.psum(sums, axis_name))

  return eval_step


def _variants(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`SearchNetwork`'s variant fields that the config turns on (per-edge op sets: RobustDARTS's spaces, P-DARTS's
  stages; PC-DARTS, DARTS-). The op sets go in as explicit ``edge_ops`` (`edge_ops`)."""
  model = config.model
  ops = edge_ops(model)
  variants = {'edge_ops': tuple(ops[kind] for kind in genotypes.CELL_TYPES),
              'partial_channels': model.get('partial_channels', 1),
              'edge_normalization': model.get('edge_normalization', False),
              'aux_skip': model.get('aux_skip_weight', 0.0) > 0}
  darts = genotypes.edge_primitives('darts', model.steps)
  defaults = {'edge_ops': tuple(darts[kind] for kind in genotypes.CELL_TYPES), 'partial_channels': 1,
              'edge_normalization': False, 'aux_skip': False}
  return {name: value for name, value in variants.items() if value != defaults[name]}


class CNNSpace(SearchSpace):
  """DARTS's CNN cells: a normal and a reduction cell, each with ``steps`` nodes of two inputs."""

  name: ClassVar[str] = 'cnn'
  run_files: ClassVar[tuple[str, ...]] = (COST_MODEL_FILE,)
  early_stopping_rules: ClassVar[tuple[str, ...]] = early_stopping.RULES
  summary_keys: ClassVar[tuple[str, ...]] = ('alpha_entropy_normal', 'alpha_entropy_reduce', 'skip_connect_normal')
  retrain_resumable_keys: ClassVar[frozenset[str]] = cnn_retraining.RESUMABLE_KEYS

  # ---- the search

  def check_search_config(self) -> None:
    config = self.config
    if config.model.dtype not in DTYPES:
      raise ValueError(f'Unknown model.dtype {config.model.dtype!r}; expected one of {", ".join(DTYPES)}.')
    if config.model.depthwise_impl not in ops.DEPTHWISE_IMPLS:
      raise ValueError(f'Unknown model.depthwise_impl {config.model.depthwise_impl!r}; expected one of '
                       f'{", ".join(ops.DEPTHWISE_IMPLS)}.')
    model = config.model
    if model.get('search_space', 'darts') not in genotypes.SEARCH_SPACES:
      raise ValueError(f'Unknown model.search_space {model.search_space!r}; expected one of '
                       f'{", ".join(genotypes.SEARCH_SPACES)}.')
    if model.get('search_space', 'darts') == 's1' and model.steps != 4:
      raise ValueError(f'model.search_space s1 is defined for cells of 4 nodes: set model.steps=4 (got {model.steps}).')
    edge_ops(model)
    if not 0 <= model.get('skip_dropout', 0.0) < 1:
      raise ValueError(f'model.skip_dropout ({model.skip_dropout}) must be in [0, 1) (0: no dropout).')
    groups = model.get('partial_channels', 1)
    if groups < 1 or model.init_channels % groups or (groups > 1 and (model.init_channels // groups) % 2):
      raise ValueError(f'model.partial_channels ({groups}) must divide model.init_channels ({model.init_channels}) '
                       'into an even number of channels (1: every channel through the ops).')
    if model.get('aux_skip_weight', 0.0) < 0 or model.get('aux_skip_decay', 'linear') not in AUX_SKIP_DECAYS:
      raise ValueError(f'model.aux_skip_weight ({model.get("aux_skip_weight")}) must be >= 0 (0: no auxiliary skip) '
                       f'and model.aux_skip_decay one of {", ".join(AUX_SKIP_DECAYS)}.')
    c = config.cost
    if c.metric not in cost.METRICS or c.form not in cost.PENALTY_FORMS:
      raise ValueError(f'cost.metric ({c.metric!r}) must be one of {", ".join(cost.METRICS)} and cost.form '
                       f'({c.form!r}) one of {", ".join(cost.PENALTY_FORMS)}.')
    if c.weight < 0 or (c.weight > 0 and not c.target > 0):
      raise ValueError(f'cost.weight ({c.weight}) must be >= 0, and with a cost term cost.target ({c.target}) '
                       f'positive (in the metric\'s unit: {c.metric}).')
    if c.eval_init_channels < 1 or c.eval_layers < 1:
      raise ValueError(f'cost.eval_init_channels ({c.eval_init_channels}) and cost.eval_layers ({c.eval_layers}) '
                       'must be positive.')

  def search_setup(self, workdir: Path, axis_name: Any) -> SearchSetup:
    config = self.config
    batch_size = config.batch_size
    ds = data.load_dataset(config.data.name, config.data.dir or None)
    train_images, train_labels, valid_images, valid_labels = data.search_split(ds, config.data.subset)
    steps_per_epoch = data.num_batches(len(train_images), batch_size, config.max_steps_per_epoch)
    size = config.data.image_size
    image_shape = (size, size, train_images.shape[-1]) if size else train_images.shape[1:]
    self._image_shape, self._num_classes, self._native_size = image_shape, ds.num_classes, ds.train_images.shape[1]
    self._arch_cost = None
    if config.cost.weight > 0 or config.cost.metric != 'latency':
      # E[cost] is logged every epoch; latency only with a cost term, which measures its table.
      self._arch_cost = _architecture_cost(config, workdir, ds.num_classes, image_shape)

    # The supernet takes the mixing weights: the step computes them with the configured relaxation. Its variants are
    # named only where they are on.
    model = SearchNetwork(
        C=config.model.init_channels, num_classes=ds.num_classes, layers=config.model.layers,
        steps=config.model.steps, multiplier=config.model.multiplier, stem_multiplier=config.model.stem_multiplier,
        depthwise_impl=config.model.depthwise_impl, axis_name=axis_name, dtype=config.model.dtype,
        remat=config.model.remat, mixing='weights', **_variants(config))
    self._model = model
    schedule = optimizers.epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs,
                                                steps_per_epoch)
    weight_tx = optimizers.weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                                            grad_clip=config.grad_clip)
    # The alphas stay fixed for the first arch_warmup_epochs while the weights train (DARTS+, PC-DARTS): the
    # architecture gradient of untrained weights favours the parameter-free ops. A zero learning rate, not a
    # skipped step: one program for the whole run.
    arch_lr = config.arch_learning_rate if not config.arch_warmup_epochs else optax.join_schedules(
        [optax.constant_schedule(0.0), optax.constant_schedule(config.arch_learning_rate)],
        [config.arch_warmup_epochs * steps_per_epoch])
    arch_tx = optimizers.arch_optimizer(arch_lr, weight_decay=config.arch_weight_decay)
    train_preprocess, eval_preprocess = (
        data.make_preprocess(ds.mean, ds.std, augment=augment, image_size=config.data.image_size,
                             axis_name=axis_name)
        for augment in (config.data.augment, False))

    aux_skip = None
    if config.model.get('aux_skip_weight', 0.0) > 0:
      aux_skip = aux_skip_schedule(config.model.aux_skip_weight, config.model.aux_skip_decay, config.num_epochs,
                                   steps_per_epoch)
    # Every schedule starts at model.aux_skip_weight.
    init = lambda rng: create_search_state(rng, model, image_shape, weight_tx, arch_tx,
                                           aux_skip_weight=config.model.get('aux_skip_weight', 0.0) or 1.0)
    skip_dropout = None
    if config.model.get('skip_dropout', 0.0) > 0:
      skip_dropout = relaxations.skip_dropout_schedule(config.model.skip_dropout, config.num_epochs,
                                                       config.arch_warmup_epochs, steps_per_epoch)
    problem = search_problem(model, schedule, train_preprocess, momentum=config.momentum,
                             weight_decay=config.weight_decay, aux_skip=aux_skip, skip_dropout=skip_dropout)

    def batches(epoch: int, start: int, seed: int):
      """(train, validation) batches from two separately shuffled streams."""
      streams = [data.epoch_batches(images, labels, batch_size=batch_size, seed=seed, epoch=epoch, stream=stream,
                                    start_step=start, max_steps=steps_per_epoch, process_index=jax.process_index(),
                                    process_count=jax.process_count())
                 for stream, (images, labels) in enumerate([(train_images, train_labels),
                                                            (valid_images, valid_labels)])]
      return zip(*streams)

    def validation_loss(params, batch_stats, weights, batches):
      """The mean cross-entropy over fixed batches (images (B, N, ...), labels (B, N): N batches of B, the example
      first so that sharding splits examples), BN with batch statistics as in the architecture step."""
      def batch_loss(batch):
        logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, eval_preprocess(None, batch[0]),
                                weights, train=True, mutable=['batch_stats'], **_apply_options(model, None))
        return _cross_entropy(logits, batch[1])
      images, labels = batches
      # lax.map: one compiled copy of the network for any number of batches.
      return jnp.mean(jax.lax.map(batch_loss, (jnp.swapaxes(images, 0, 1), jnp.swapaxes(labels, 0, 1))))

    def hessian_batches(count: int):
      full = [(x, y) for x, y, mask in data.eval_batches(valid_images, valid_labels, batch_size,
                                                          jax.process_index(), jax.process_count())
              if mask.all()][:count]
      return tuple(np.stack(arrays, axis=1) for arrays in zip(*full))

    arch_penalty = None
    if config.cost.weight > 0:
      cost_term = cost.make_cost_penalty(
          self._arch_cost, target=config.cost.target, form=config.cost.form, weight=config.cost.weight,
          mnasnet_alpha=config.cost.mnasnet_alpha, mnasnet_beta=config.cost.mnasnet_beta)
      arch_penalty = lambda alphas, weights, step: cost_term(weights)
    return SearchSetup(
        summary=(f'{ds.name}: {len(train_images)} training / {len(valid_images)} validation images, '
                 f'{steps_per_epoch} steps of {batch_size} per epoch'),
        steps_per_epoch=steps_per_epoch, batches=batches, init=init, problem=problem,
        eval_step=make_eval_step(model, eval_preprocess),
        eval_carry=None,
        eval_batches=lambda: data.eval_batches(valid_images, valid_labels, batch_size, jax.process_index(),
                                               jax.process_count()),
        eval_entries=lambda totals: {'valid_loss': float(totals['loss_sum'] / totals['count']),
                                     'valid_accuracy': float(totals['correct'] / totals['count'])},
        validation_loss=validation_loss, hessian_batches=hessian_batches,
        learning_rate=lambda step: float(schedule(step)), arch_penalty=arch_penalty)

  def _primitives(self) -> genotypes.EdgePrimitives:
    return edge_ops(self.config.model)

  def derive_genotype(self, alphas: PyTree, weights: PyTree | None = None) -> genotypes.Genotype:
    steps, multiplier = self.config.model.steps, self.config.model.multiplier
    if weights is None:
      return genotypes.derive_genotype(alphas, steps=steps, multiplier=multiplier, primitives=self._primitives())
    return genotypes.derive_genotype(weights, steps=steps, multiplier=multiplier, from_weights=True,
                                     primitives=self._primitives())

  def genotype_weights(self, genotype: genotypes.Genotype, alphas: PyTree) -> PyTree:
    """One-hot mixing weights of the genotype's ops: node ``i``'s two genes ``(op, j)`` set row ``start_i + j`` (its
    edges are rows ``start_i ..``, ``start_i = Σ_{k<i} (2 + k)``) at the op's column of that edge; PC-DARTS's edge
    weights are 1 on the genotype's inputs and 0 on the others, which also stops the channels that bypass the ops
    of a dropped edge (without edge normalisation those still reach the node: the supernet then runs the genotype's
    ops plus every edge's bypass)."""
    primitives = self._primitives()
    weights = {}
    for kind, a in alphas.items():
      if kind not in diagnostics.CELL_TYPES:  # edge normalisation: one array per node, one entry per input
        genes = getattr(genotype, kind.removeprefix('edges_'))
        weights[kind] = [np.zeros_like(np.asarray(b)) for b in a]
        for gene, (_, j) in enumerate(genes):
          weights[kind][gene // 2][j] = 1
        continue
      w = np.zeros_like(np.asarray(a))
      for gene, (op, j) in enumerate(getattr(genotype, kind)):
        node = gene // 2
        row = node * (node + 3) // 2 + j  # Σ_{k<node} (2 + k)
        w[row, primitives[kind][row].index(op)] = 1
      weights[kind] = w
    return weights

  def row_ops(self, weights: PyTree) -> list[tuple[str, ...]]:
    # The leaves of two dimensions are the cell types' (the edge normalisation's are one per node), in key order.
    primitives = self._primitives()
    return [tuple(ops) for kind in sorted(weights) if kind in diagnostics.CELL_TYPES for ops in primitives[kind]]

  def alphas_record(self, alphas: PyTree) -> dict[str, Any]:
    # Edge normalisation's parameters are one list per node.
    return {kind: np.asarray(a).tolist() if kind in diagnostics.CELL_TYPES else [np.asarray(b).tolist() for b in a]
            for kind, a in alphas.items()}

  def alphas_from_record(self, record: dict[str, Any]) -> PyTree:
    alphas = {kind: np.asarray(record[kind], np.float32) for kind in diagnostics.CELL_TYPES}
    for kind in diagnostics.CELL_TYPES:
      if genotypes.edges_key(kind) in record:
        alphas[genotypes.edges_key(kind)] = [np.asarray(b, np.float32) for b in record[genotypes.edges_key(kind)]]
    return alphas

  def diagnostics(self, alphas: PyTree, history: list[Any], weights: PyTree | None) -> dict[str, float]:
    # The ops' weights per cell type (edge normalisation's are not rows of ops).
    ops_only = lambda tree: None if tree is None else {kind: tree[kind] for kind in diagnostics.CELL_TYPES}
    return diagnostics.epoch_diagnostics(ops_only(alphas), history, ops_only(weights))

  def genotype_record(self, genotype: genotypes.Genotype) -> dict[str, Any]:
    """The genotype's network cost at the search network's C, cells and image size and at the retrain
    network's (``cost.eval_*``, on the dataset's own image size)."""
    config, image_shape = self.config, self._image_shape

    def at(C, layers, size, stem_multiplier=3):
      total = cost.network_cost(genotype, C=C, layers=layers, num_classes=self._num_classes, image_size=size,
                                in_channels=image_shape[-1], stem_multiplier=stem_multiplier)
      return {'C': C, 'layers': layers, 'image_size': size, 'params': total.params, 'macs': total.macs}
    return {'cost': {
        'search': at(config.model.init_channels, config.model.layers, image_shape[0], config.model.stem_multiplier),
        'eval': at(config.cost.eval_init_channels, config.cost.eval_layers, self._native_size)}}

  def genotype_entries(self, genotype: genotypes.Genotype) -> dict[str, Any]:
    costs = self.genotype_record(genotype)['cost']
    return {f'genotype_{k}{suffix}': costs[net][k] for net, suffix in (('search', ''), ('eval', '_eval'))
            for k in ('params', 'macs')}

  def architecture_entries(self, alphas: PyTree) -> dict[str, float]:
    if self._arch_cost is None:
      return {}
    # The cost term's E[cost] under the current alphas (also without the term).
    ops_alphas = {kind: alphas[kind] for kind in diagnostics.CELL_TYPES}
    return {f'expected_{self.config.cost.metric}': float(cost.expected_cost(diagnostics.softmax_weights(ops_alphas),
                                                                             self._arch_cost))}

  def write_search_artifacts(self, workdir: Path, alphas: PyTree, genotype: genotypes.Genotype) -> None:
    np.savez(workdir / 'alphas.npz', normal=alphas['normal'], reduce=alphas['reduce'])
    plots.plot_genotype(genotype, f'{workdir}{os.sep}')
    run_plots.plot_search(workdir)

  # ---- genotypes

  def load_genotype(self, spec: str) -> genotypes.Genotype:
    return genotype_formats.load_genotype(spec)

  def genotype_to_json(self, genotype: genotypes.Genotype) -> dict[str, Any]:
    return json.loads(genotype_formats.genotype_to_json(genotype))

  def plot_genotype(self, genotype: genotypes.Genotype, prefix: str) -> None:
    plots.plot_genotype(genotype, prefix)

  # ---- retraining

  def check_retrain_config(self) -> None:
    cnn_retraining.check_config(self.config)

  def retraining(self, workdir: Path, genotype: genotypes.Genotype) -> Retraining:
    return cnn_retraining.retraining(self.config, workdir, genotype)


def _architecture_cost(config: ml_collections.ConfigDict, workdir: Path, num_classes: int,
                       image_shape: tuple[int, ...]) -> cost.ArchitectureCost:
  """The cost of every choice of the supernet in ``cost.metric`` (`cost.architecture_cost`). Saved in the workdir
  and read back on resume, so that a resumed run uses the latencies its start measured; with several processes,
  process 0's."""
  path = workdir / COST_MODEL_FILE
  if path.is_file():
    saved = json.loads(path.read_text())
    return cost.ArchitectureCost({k: np.asarray(v) for k, v in saved['tables'].items()}, np.asarray(saved['keep']),
                                 saved['fixed'])
  network = dict(C=config.model.init_channels, layers=config.model.layers, num_classes=num_classes,
                 image_size=tuple(image_shape[:2]), in_channels=image_shape[-1], steps=config.model.steps,
                 multiplier=config.model.multiplier, stem_multiplier=config.model.stem_multiplier,
                 primitives=edge_ops(config.model))
  if config.cost.metric == 'latency':
    from darts_jax.cnn import latency  # pylint: disable=import-outside-toplevel  (measures on the device: slow)
    table = latency.LatencyTable(config.cost.latency_cache or None, depthwise_impl=config.model.depthwise_impl)
    arch = latency.architecture_latency(table, **network)
    table.save()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      tables, fixed = multihost_utils.broadcast_one_to_all((dict(arch.tables), np.float64(arch.fixed)))
      arch = cost.ArchitectureCost({k: np.asarray(v) for k, v in tables.items()}, arch.keep, float(fixed))
  else:
    arch = cost.architecture_cost(lambda unit: getattr(cost.unit_cost(unit), config.cost.metric), **network)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    reporting.write_json(path, {'metric': config.cost.metric, 'fixed': arch.fixed, 'keep': arch.keep.tolist(),
                                'tables': {k: v.tolist() for k, v in arch.tables.items()}})
  return arch
