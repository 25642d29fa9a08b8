"""NAS-Bench-201's space (`darts_jax.nb201`) behind `SearchSpace`: a search of one cell shared by every cell of the
benchmark's network, scored by the benchmark's own training when the user has its file.

The search trains `darts_jax.nb201.model.Network` as the supernet (C channels, ``model.cells`` cells per stage, the
cells' BN without affine parameters as the benchmark's searches: ``model.affine``) on the two halves of the training
set (`data.search_split`), the weights by SGD with momentum on a per-epoch cosine schedule, the alphas (one (6, 5)
array) by Adam; the loss takes the relaxation's mixing weights, so every relaxation, regulariser, hypergradient
method and the Hessian diagnostics work as on DARTS's space. The genotype is each edge's strongest op (``none``
included, the benchmark's rule), written as the benchmark's architecture string.

Epoch records, besides the common ones: ``alpha_entropy`` (log 5 = 1.61 at the start), ``alpha_max_weight``,
``stability`` (the fraction of edges whose op the epoch kept), ``unchanged_epochs``, ``skip_connect_normal`` (the
cell's skip connections: rising is DARTS's collapse; the ``darts_plus`` rule reads it), the genotype's
``genotype_params`` and ``genotype_macs`` at the benchmark's size (C=16, N=5, 32×32, the search's classes), and,
with ``benchmark.path`` (or ``--benchmark PATH``), ``benchmark_cifar10``, ``benchmark_cifar100`` and
``benchmark_imagenet16_120``: the derived architecture's test accuracy after the benchmark's training
(`darts_jax.nb201.benchmark`). The workdir: ``alphas.npz`` (``cell``), ``cell.dot`` and ``benchmark.png`` (the supernet's
accuracy beside the benchmark's accuracies of the derived cells and the skip connections, per epoch).

PC-DARTS's supernet options are ``model`` keys, as on DARTS's space: ``partial_channels`` K (1/K of each edge's
channels through its ops, the rest bypassing them, then shuffled) and ``edge_normalization`` (a β per incoming edge
of every node; the alphas become ``{'cell': (6, 5), 'edges_cell': [(1,), (2,), (3,)]}``, which the relaxation maps
like the ops' rows and every hypergradient differentiates). The genotype keeps every edge, so β weighs the supernet's
sums only, not the genotype rule; records and ``alphas.npz`` hold the ops' array under ``cell`` (``alphas.jsonl``
the β too).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import data
from darts_jax.analysis import nb201_plots
from darts_jax.bilevel.step import BilevelProblem, SearchState
from darts_jax.cnn import ops
from darts_jax.data.augment import Preprocess
from darts_jax.dynamics import diagnostics, early_stopping
from darts_jax.nb201 import benchmark, genotypes
from darts_jax.nb201.model import Network, network_cost
from darts_jax.spaces import nb201_retraining
from darts_jax.spaces.base import Retraining, SearchSetup, SearchSpace
from darts_jax.training import optimizers

PyTree = Any
Genotype = genotypes.Genotype
GENOTYPE_FILE = 'genotype.json'
CELL_FILE = 'cell.dot'


def create_search_state(rng: jax.Array, model: Network, image_shape: tuple[int, int, int],
                        weight_tx: optax.GradientTransformation,
                        arch_tx: optax.GradientTransformation) -> SearchState:
  """Weights by PyTorch's default init, alphas ``1e-3·N(0, 1)`` of shape (6, 5) (the benchmark's DARTS), both
  optimizers' states. With ``model.edge_normalization`` the alphas are ``{'cell': (6, 5), 'edges_cell': [(1,), (2,),
  (3,)]}``, the edges' drawn the same way from a stream of their own (the ops' are those without them)."""
  params_key, alphas_key, augment_key = jax.random.split(rng, 3)
  alphas = 1e-3 * jax.random.normal(alphas_key, (len(genotypes.EDGES), len(genotypes.OPS)))
  if model.edge_normalization:
    node_keys = jax.random.split(jax.random.fold_in(alphas_key, 1), genotypes.NUM_NODES - 1)
    alphas = {genotypes.CELL_KEY: alphas,
              genotypes.EDGES_KEY: [1e-3 * jax.random.normal(key, (node,)) for node, key in enumerate(node_keys, 1)]}
  variables = model.init(ops.init_key(params_key), jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                         jax.tree.map(jax.nn.softmax, alphas), train=False)
  params = variables['params']
  return SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                     alphas=alphas, weight_opt_state=weight_tx.init(params), arch_opt_state=arch_tx.init(alphas),
                     rng=augment_key, carry=(), weight_tx=weight_tx, arch_tx=arch_tx)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def search_problem(model: Network, schedule: optax.Schedule, preprocess: Preprocess, *, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> BilevelProblem:
  """The space's side of the bilevel step for batches ``(images (N, H, W, C), int32 labels (N,))``: the
  cross-entropy of the supernet mixed by the step's weights in every pass (BN with batch statistics), both batches
  prepared by `preprocess` with keys from ``(state.rng, state.step)``, the learning rate `schedule` of the weight
  optimizer (SGD with `momentum` and `weight_decay`), under ``model.axis_name``."""
  def prepare(state, train_batch, val_batch):
    train_key, val_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    return ((preprocess(train_key, train_batch[0]), train_batch[1]),
            (preprocess(val_key, val_batch[0]), val_batch[1]))

  def loss(params, batch_stats, weights, batch, weight_step):
    del weight_step  # every pass is the cross-entropy
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch[0], weights, train=True,
                                  mutable=['batch_stats'])
    return _cross_entropy(logits, batch[1]), {'logits': logits, 'batch_stats': updates['batch_stats']}

  return BilevelProblem(
      loss=loss, prepare=prepare, learning_rate=lambda step, train: schedule(step),
      metrics=lambda train, aux: {'accuracy': jnp.mean(jnp.argmax(aux['logits'], -1) == train[1])},
      momentum=momentum, weight_decay=weight_decay, axis_name=model.axis_name)


def make_eval_step(model: Network, preprocess: Preprocess):
  """``eval_step(state, weights, None, (images, labels, mask)) -> (None, sums)``: the supernet mixed by ``weights``
  in evaluation mode (BN with the running statistics) on images prepared by `preprocess`; ``mask`` (1 for real
  examples) lets the last batch be padded; ``loss_sum``, ``correct`` and ``count`` summed over ``model.axis_name``."""
  def eval_step(state: SearchState, weights: PyTree, carry: None, batch):
    images, labels, mask = batch
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats}, preprocess(None, images), weights,
                         train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums = {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            'count': jnp.sum(mask)}
    return carry, (sums if model.axis_name is None else jax.lax.psum(sums, model.axis_name))

  return eval_step


def load_genotype(spec: str) -> Genotype:
  """The genotype `spec` names: an architecture string, a search or retrain workdir, a ``genotype.json`` or its
  JSON text (``{"arch": "|...|"}``)."""
  spec = str(spec).strip()
  if spec.startswith('|'):
    return genotypes.from_arch_str(spec)
  path = Path(spec).expanduser()
  if path.is_dir():
    path = path / GENOTYPE_FILE
    if not path.is_file():
      raise FileNotFoundError(f'{path} does not exist: pass a search workdir after its end, or an architecture string.')
  text = path.read_text() if path.is_file() else spec
  try:
    arch = json.loads(text)['arch']
  except (ValueError, KeyError, TypeError):
    raise ValueError(f'genotype {spec!r} is neither a NAS-Bench-201 architecture string '
                     f'({genotypes.to_arch_str(("nor_conv_3x3",) * 6)}), a workdir, a genotype.json nor JSON like '
                     '{"arch": "|...|"}.') from None
  return genotypes.from_arch_str(arch)


class NB201Space(SearchSpace):
  """NAS-Bench-201's cell (module docstring)."""

  name: ClassVar[str] = 'nb201'
  early_stopping_rules: ClassVar[tuple[str, ...]] = early_stopping.RULES
  summary_keys: ClassVar[tuple[str, ...]] = ('alpha_entropy', 'skip_connect_normal', 'benchmark_cifar10')
  retrain_resumable_keys: ClassVar[frozenset[str]] = nb201_retraining.RESUMABLE_KEYS

  def __init__(self, config):
    super().__init__(config)
    self._benchmark: benchmark.Benchmark | None = None
    self._num_classes = 10

  # ---- the search

  def check_search_config(self) -> None:
    config = self.config
    if config.model.init_channels < 1 or config.model.cells < 1:
      raise ValueError(f'model.init_channels ({config.model.init_channels}) and model.cells ({config.model.cells}) '
                       'must be positive.')
    if config.data.image_size % 4:
      raise ValueError(f'data.image_size ({config.data.image_size}) must be divisible by 4 (two reductions); 0 keeps '
                       'the dataset\'s (28 or 32).')
    groups = config.model.get('partial_channels', 1)
    if groups < 1 or config.model.init_channels % groups:
      raise ValueError(f'model.partial_channels ({groups}) must divide model.init_channels '
                       f'({config.model.init_channels}) (1: every channel through the ops).')
    if str(config.benchmark.hp) not in benchmark.HPS:
      raise ValueError(f'benchmark.hp must be one of {", ".join(benchmark.HPS)}, got {config.benchmark.hp!r}.')

  def search_setup(self, workdir: Path, axis_name: Any) -> SearchSetup:
    del workdir  # no files of its own
    config = self.config
    if config.benchmark.path:  # opened first: a missing file fails before the data loads
      self._benchmark = benchmark.open_benchmark(config.benchmark.path, config.benchmark.hp)
    batch_size = config.batch_size
    ds = data.load_dataset(config.data.name, config.data.dir or None)
    train_images, train_labels, valid_images, valid_labels = data.search_split(ds, config.data.subset)
    steps_per_epoch = data.num_batches(len(train_images), batch_size, config.max_steps_per_epoch)
    size = config.data.image_size
    image_shape = (size, size, train_images.shape[-1]) if size else train_images.shape[1:]
    self._num_classes = ds.num_classes
    model = Network(C=config.model.init_channels, N=config.model.cells, num_classes=ds.num_classes,
                    affine=config.model.affine, axis_name=axis_name,
                    partial_channels=config.model.get('partial_channels', 1),
                    edge_normalization=config.model.get('edge_normalization', False))
    schedule = optimizers.epoch_cosine_schedule(config.learning_rate, config.learning_rate_min, config.num_epochs,
                                                steps_per_epoch)
    weight_tx = optimizers.weight_optimizer(schedule, momentum=config.momentum, weight_decay=config.weight_decay,
                                            grad_clip=config.grad_clip)
    arch_tx = optimizers.arch_optimizer(config.arch_learning_rate, weight_decay=config.arch_weight_decay)
    train_preprocess, eval_preprocess = (
        data.make_preprocess(ds.mean, ds.std, augment=augment, image_size=size, axis_name=axis_name)
        for augment in (config.data.augment, False))
    where = dict(process_index=jax.process_index(), process_count=jax.process_count())

    def batches(epoch: int, start: int, seed: int):
      """(train, validation) batches from two separately shuffled streams."""
      return zip(*(data.epoch_batches(images, labels, batch_size=batch_size, seed=seed, epoch=epoch, stream=stream,
                                      start_step=start, max_steps=steps_per_epoch, **where)
                   for stream, (images, labels) in enumerate([(train_images, train_labels),
                                                              (valid_images, valid_labels)])))

    def validation_loss(params, batch_stats, weights, batches):
      """The mean cross-entropy over fixed batches (images (B, N, ...), labels (B, N): N batches of B), BN with
      batch statistics as in the architecture step."""
      def batch_loss(batch):
        logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, eval_preprocess(None, batch[0]),
                                weights, train=True, mutable=['batch_stats'])
        return _cross_entropy(logits, batch[1])
      images, labels = batches
      return jnp.mean(jax.lax.map(batch_loss, (jnp.swapaxes(images, 0, 1), jnp.swapaxes(labels, 0, 1))))

    def hessian_batches(count: int):
      full = [(x, y) for x, y, mask in data.eval_batches(valid_images, valid_labels, batch_size, **where)
              if mask.all()][:count]
      return tuple(np.stack(arrays, axis=1) for arrays in zip(*full))

    return SearchSetup(
        summary=(f'{ds.name}: {len(train_images)} training / {len(valid_images)} validation images, '
                 f'{steps_per_epoch} steps of {batch_size} per epoch'),
        steps_per_epoch=steps_per_epoch, batches=batches,
        init=jax.jit(lambda rng: create_search_state(rng, model, image_shape, weight_tx, arch_tx)),
        problem=search_problem(model, schedule, train_preprocess, momentum=config.momentum,
                               weight_decay=config.weight_decay),
        eval_step=make_eval_step(model, eval_preprocess), eval_carry=None,
        eval_batches=lambda: data.eval_batches(valid_images, valid_labels, batch_size, **where),
        eval_entries=lambda totals: {'valid_loss': float(totals['loss_sum'] / totals['count']),
                                     'valid_accuracy': float(totals['correct'] / totals['count'])},
        validation_loss=validation_loss, hessian_batches=hessian_batches,
        learning_rate=lambda step: float(schedule(step)))

  def derive_genotype(self, alphas: PyTree, weights: PyTree | None = None) -> Genotype:
    return genotypes.derive_genotype(np.asarray(genotypes.ops_alphas(alphas if weights is None else weights),
                                                np.float64))

  def genotype_weights(self, genotype: Genotype, alphas: PyTree) -> PyTree:
    """The supernet's mixing weights that run `genotype` alone: on every edge a one-hot row at its op (``none``
    included: its row adds nothing, as the genotype's ``none`` edge), in the dtype of `alphas`.

    With ``model.edge_normalization`` the edges' weights are 1 on every edge whose op is not ``none`` and 0 on the
    ``none`` ones: the genotype's cell sums its edges unscaled, so a weight of 1 makes the node's sum the plain one
    (the softmax's ``1/i`` would scale it), and 0 also removes PC-DARTS's bypassed channels of a ``none`` edge, which
    the ops' row cannot. With ``model.partial_channels`` K > 1 the kept edges still pass (C − C/K) channels around
    their op and shuffle them (the search's supernet), so only K = 1 computes the genotype's network exactly."""
    genotype = genotypes.check_genotype(genotype)
    ops_alphas = np.asarray(genotypes.ops_alphas(alphas))
    weights = np.zeros_like(ops_alphas)
    weights[np.arange(len(genotypes.EDGES)), [genotypes.OPS.index(op) for op in genotype]] = 1
    if not isinstance(alphas, Mapping):
      return weights
    kept = {edge: op != 'none' for edge, op in zip(genotypes.EDGES, genotype)}
    return {genotypes.CELL_KEY: weights,
            genotypes.EDGES_KEY: [np.asarray([kept[node, source] for source in range(node)], np.asarray(b).dtype)
                                  for node, b in enumerate(alphas[genotypes.EDGES_KEY], 1)]}

  def row_ops(self, weights: PyTree) -> list[tuple[str, ...]]:
    # The ops' array is the one leaf of two dimensions (edge normalisation's are one per node): `OPS` on every edge.
    del weights
    return [genotypes.OPS] * len(genotypes.EDGES)

  def alphas_record(self, alphas: PyTree) -> dict[str, Any]:
    record = {'cell': np.asarray(genotypes.ops_alphas(alphas)).tolist()}
    if isinstance(alphas, Mapping):  # edge normalisation's one list per node
      record[genotypes.EDGES_KEY] = [np.asarray(b).tolist() for b in alphas[genotypes.EDGES_KEY]]
    return record

  def alphas_from_record(self, record: dict[str, Any]) -> PyTree:
    cell = np.asarray(record['cell'], np.float32)
    if genotypes.EDGES_KEY not in record:
      return cell
    return {genotypes.CELL_KEY: cell,
            genotypes.EDGES_KEY: [np.asarray(b, np.float32) for b in record[genotypes.EDGES_KEY]]}

  def diagnostics(self, alphas: PyTree, history: list[Any], weights: PyTree | None) -> dict[str, float]:
    # The ops' weights (edge normalisation's are not rows of ops).
    alphas = genotypes.ops_alphas(alphas)
    if weights is None:
      entropy, largest = diagnostics.alpha_entropy({'': alphas}), diagnostics.alpha_max_weight({'': alphas})
    else:
      weights = genotypes.ops_alphas(weights)
      entropy, largest = diagnostics.weights_entropy({'': weights}), diagnostics.weights_max({'': weights})
    entries = {'alpha_entropy': entropy[''], 'alpha_max_weight': largest[''],
               'unchanged_epochs': diagnostics.unchanged_epochs(history, lambda a, b: a == b),
               'skip_connect_normal': sum(op == 'skip_connect' for op in history[-1])}
    if len(history) > 1:
      entries['stability'] = float(np.mean([a == b for a, b in zip(history[-2], history[-1])]))
    return entries

  def genotype_record(self, genotype: Genotype) -> dict[str, Any]:
    """The genotype's cost at the benchmark's size (C=16, N=5, 32×32 images, the search's classes)."""
    total = network_cost(genotype, num_classes=self._num_classes)
    return {'cost': {'params': total.params, 'macs': total.macs}}

  def genotype_entries(self, genotype: Genotype) -> dict[str, Any]:
    total = network_cost(genotype, num_classes=self._num_classes)
    entries = {'genotype_params': total.params, 'genotype_macs': total.macs}
    if self._benchmark is not None:
      entries.update({f'benchmark_{name}': accuracy
                      for name, accuracy in self._benchmark.test_accuracies(tuple(genotype)).items()})
    return entries

  def genotype_text(self, genotype: Genotype) -> str:
    return genotypes.to_arch_str(genotype)

  def write_search_artifacts(self, workdir: Path, alphas: PyTree, genotype: Genotype) -> None:
    np.savez(workdir / 'alphas.npz', cell=np.asarray(genotypes.ops_alphas(alphas)))
    self.plot_genotype(genotype, f'{workdir}/')
    nb201_plots.plot_benchmark(workdir)

  # ---- genotypes

  def load_genotype(self, spec: str) -> Genotype:
    return load_genotype(spec)

  def genotype_to_json(self, genotype: Genotype) -> dict[str, Any]:
    return {'arch': genotypes.to_arch_str(genotype)}

  def plot_genotype(self, genotype: Genotype, prefix: str) -> None:
    """The cell as a Graphviz ``.dot`` text (no Graphviz needed to write it)."""
    edges = ''.join(f'  {source} -> {node} [label="{op}"];\n'
                    for (node, source), op in zip(genotypes.EDGES, genotype) if op != 'none')
    Path(f'{prefix}{CELL_FILE}').write_text(f'digraph cell {{\n  rankdir=LR;\n{edges}}}\n')

  # ---- retraining

  def check_retrain_config(self) -> None:
    nb201_retraining.check_config(self.config)

  def retraining(self, workdir: Path, genotype: Genotype) -> Retraining:
    return nb201_retraining.retraining(self.config, workdir, genotype)
