"""NAS-Bench-201's space: the architecture string, the parameter and multiply-add counts against the benchmark's
published figures, the supernet against a genotype's network, the exact hypergradient against autodiff (float64),
the benchmark lookup on a small file in the benchmark's own format, the ImageNet16-120 reader, and a search and a
retraining through the tasks."""
import itertools
import json
import pickle
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import data
from darts_jax.analysis import run_files
from darts_jax.bilevel.step import SearchState, make_search_step, momentum_buffer
from darts_jax.dynamics import relaxations
from darts_jax.nb201 import benchmark, genotypes
from darts_jax.nb201.model import Cell, Network, count_params, network_cost
from darts_jax.spaces.nb201 import load_genotype, search_problem
from darts_jax.tasks import retrain, search
from darts_jax.training import reporting
from darts_jax.training.config_utils import load_config_module

REPO = Path(__file__).resolve().parents[1]

ALL_CONV3 = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
ALL_SKIP = '|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|'
# NATS-Bench issue #36 (D-X-Y/NATS-Bench): its CIFAR-10 cost, get_cost_info(hp='12').
ISSUE_36 = '|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
# The benchmark's architecture 0 (NATS-Bench issue #24 quotes its FLOPs on the three datasets).
INDEX_0 = '|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|'


def test_architecture_string_round_trips_and_rejects_malformed_ones():
  example = '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'
  genotype = genotypes.from_arch_str(example)
  assert genotype == ('nor_conv_3x3', 'nor_conv_3x3', 'avg_pool_3x3', 'skip_connect', 'nor_conv_3x3', 'skip_connect')
  assert genotypes.to_arch_str(genotype) == example
  rng = np.random.default_rng(0)
  for _ in range(20):  # random genotypes, 'none' included
    genotype = tuple(rng.choice(genotypes.OPS, len(genotypes.EDGES)))
    assert genotypes.from_arch_str(genotypes.to_arch_str(genotype)) == genotype
  for bad in ('', example.replace('~1|+', '~0|+'), example.replace('avg_pool_3x3', 'max_pool_3x3'),
              example.rsplit('+', 1)[0], example[:-1]):
    with pytest.raises(ValueError, match='not a NAS-Bench-201 architecture string'):
      genotypes.from_arch_str(bad)
  assert load_genotype(json.dumps({'arch': example})) == genotypes.from_arch_str(example)


@pytest.mark.parametrize('arch, num_classes, image_size, params, mflops', [
    # The benchmark's extremes over its 15,625 architectures (the all-3x3 cell is the largest, cells without a
    # convolution the smallest), CIFAR-10 and CIFAR-100, as tabulated from NAS-Bench-201 v1_1 by EvoXBench's
    # NB201 benchmark (its min/max of 'params' and 'flops').
    (ALL_CONV3, 10, 32, 1.531546, 220.11969),
    (ALL_SKIP, 10, 32, 0.073306, 7.78305),
    (ALL_CONV3, 100, 32, 1.537396, 220.12554),
    (ALL_SKIP, 100, 32, 0.079156, 7.7889),
    (ALL_SKIP, 120, 16, 0.080456, None),  # ImageNet16-120's smallest
    (ISSUE_36, 10, 32, 0.802426, 113.95137),  # NATS-Bench issue #36
    (INDEX_0, 10, 32, None, 15.64737),  # NATS-Bench issue #24: cifar10-valid, cifar100, ImageNet16-120
    (INDEX_0, 100, 32, None, 15.65322),
    (INDEX_0, 120, 16, None, 3.91948),
])
def test_costs_match_the_benchmarks_published_figures(arch, num_classes, image_size, params, mflops):
  """The benchmark reports params in millions ("MB") to 6 decimals and FLOPs (multiply-adds) in millions to 5:
  exact integers here."""
  cost = network_cost(genotypes.from_arch_str(arch), num_classes=num_classes, image_size=image_size)
  if params is not None:
    assert cost.params == round(params * 1e6)
  if mflops is not None:
    assert cost.macs == round(mflops * 1e6)


@pytest.mark.parametrize('arch', [ALL_CONV3, INDEX_0])  # every op kind between them
def test_network_holds_the_counted_parameters(arch):
  """The Flax network's parameters (shapes only) are the count the benchmark's figures were checked against."""
  genotype = genotypes.from_arch_str(arch)
  variables = jax.eval_shape(lambda: Network(genotype=genotype).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert count_params(variables['params']) == network_cost(genotype).params


def _one_hot_case(module_of, genotype, images):
  """(expected, got): the supernet's module (``module_of(None)``) with one-hot weights of `genotype` and the
  genotype's module on `images`, the latter with the supernet's parameters of the same names, in training mode
  (BN with batch statistics) and evaluation mode (running statistics); asserts the parameter names first."""
  supernet, discrete = module_of(None), module_of(genotype)
  one_hot = jax.nn.one_hot([genotypes.OPS.index(op) for op in genotype], len(genotypes.OPS))
  variables = jax.jit(lambda key: supernet.init(key, images, one_hot, train=False))(jax.random.key(0))
  own = jax.eval_shape(lambda: discrete.init(jax.random.key(0), images, None, train=False))
  flat, own_flat = (dict(jax.tree_util.tree_flatten_with_path(v)[0]) for v in (variables, own))
  assert own_flat.keys() < flat.keys()
  # What the supernet has besides: the convolutions of the ops not chosen.
  assert {next(k.key for k in path if k.key.startswith('edge')) for path in flat.keys() - own_flat.keys()} == {
      f'edge{e}_{op}' for e, chosen in enumerate(genotype) for op in ('nor_conv_1x1', 'nor_conv_3x3') if op != chosen}
  shared = jax.tree_util.tree_map_with_path(lambda path, _: flat[path], own)

  @jax.jit
  def both(variables, shared):
    return [(supernet.apply(variables, images, one_hot, train=train, mutable=['batch_stats'])[0],
             discrete.apply(shared, images, None, train=train, mutable=['batch_stats'])[0]) for train in (False, True)]
  return both(variables, shared)


def test_supernet_cell_with_one_hot_weights_is_the_genotypes_cell():
  """The cell the supernet mixes, with one-hot weights, is the genotype's cell (same parameters, same output) in
  both BN modes, to float32 rounding (XLA may order the sums differently). The genotype takes every op kind."""
  genotype = genotypes.from_arch_str(ISSUE_36)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 4)), jnp.float32)
  for expected, got in _one_hot_case(lambda g: Cell(g), genotype, images):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_supernet_with_one_hot_weights_is_the_genotypes_network():
  """As the cell's test, for the whole network (N=1, C=4, 8x8 images): the stem, the reductions and the head are
  shared by both."""
  genotype = genotypes.from_arch_str(ISSUE_36)
  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  for expected, got in _one_hot_case(lambda g: Network(C=4, N=1, genotype=g), genotype, images):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_genotype_weights_make_the_supernet_cell_a_sampled_genotypes_cell():
  """`NB201Space.genotype_weights` of a random genotype (`random_search.sample_genotypes`, the space's rule on normal
  alphas): the supernet cell mixed by them, plain and with edge normalisation's weights (1 on kept edges, 0 on
  ``none`` ones), is the genotype's cell with the same parameters (evaluation mode: the one-hot cell test covers
  both; tolerance as its). With PC-DARTS's K=2 an all-``none`` genotype's edge weights of 0 also drop the bypassed
  channels: the cell's output is zero, as the genotype's."""
  from darts_jax.spaces.nb201 import NB201Space
  from darts_jax.tasks import random_search
  space = NB201Space(_packaged('search_nb201_quick'))
  plain_alphas = np.zeros((len(genotypes.EDGES), len(genotypes.OPS)), np.float32)
  edge_alphas = {genotypes.CELL_KEY: plain_alphas,
                 genotypes.EDGES_KEY: [np.zeros(node, np.float32) for node in range(1, genotypes.NUM_NODES)]}
  sampled = list(random_search.sample_genotypes(space, edge_alphas, 4, seed=0))
  assert all(genotypes.check_genotype(g) == g for g in sampled) and len(set(sampled)) == 4
  # The first sample with a ``none`` edge and a convolution (the weights' two kinds of rows).
  genotype = next(g for g in sampled if 'none' in g and {'nor_conv_1x1', 'nor_conv_3x3'} & set(g))
  weights = space.genotype_weights(genotype, plain_alphas)
  edge_weights = space.genotype_weights(genotype, edge_alphas)
  assert weights.dtype == np.float32
  np.testing.assert_array_equal(edge_weights[genotypes.CELL_KEY], weights)
  kept = [float(op != 'none') for op in genotype]
  assert [list(b) for b in edge_weights[genotypes.EDGES_KEY]] == [kept[:1], kept[1:3], kept[3:]]
  # DARTS-PT's op names of the rows (`row_ops`) read the genotype back from its weights.
  assert [ops[k] for ops, k in zip(space.row_ops(edge_weights), weights.argmax(-1))] == list(genotype)

  images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 4)), jnp.float32)
  supernet, discrete = Cell(), Cell(genotype)
  variables = jax.jit(lambda key: supernet.init(key, images, weights, train=False))(jax.random.key(0))
  own = jax.eval_shape(lambda: discrete.init(jax.random.key(0), images, None, train=False))
  flat = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
  shared = jax.tree_util.tree_map_with_path(lambda path, _: flat[path], own)

  expected, *mixed = jax.jit(lambda variables, shared: (
      discrete.apply(shared, images, None, False), supernet.apply(variables, images, weights, False),
      supernet.apply(variables, images, edge_weights[genotypes.CELL_KEY], False,
                     edge_weights[genotypes.EDGES_KEY])))(variables, shared)
  for got in mixed:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  nothing = ('none',) * len(genotypes.EDGES)
  none_weights = space.genotype_weights(nothing, edge_alphas)
  out, _ = jax.jit(lambda key: Cell(partial_channels=2).init_with_output(
      key, images, none_weights[genotypes.CELL_KEY], False, none_weights[genotypes.EDGES_KEY]))(jax.random.key(0))
  np.testing.assert_array_equal(out, np.zeros(images.shape))


def channel_shuffle_reference(x: np.ndarray, groups: int) -> np.ndarray:
  """ShuffleNet's channel shuffle by its definition: output channel ``i·G + g`` is input channel ``g·(C/G) + i``."""
  size = x.shape[-1] // groups
  out = np.empty_like(x)
  for g in range(groups):
    for i in range(size):
      out[..., i * groups + g] = x[..., g * size + i]
  return out


def test_pc_darts_cell_mixes_a_kth_of_the_channels_and_weighs_edges_by_beta():
  """PC-DARTS's options of the supernet cell against the cell written out in NumPy, with the parameter-free ops'
  one-hot weights: at K=2 an all-``skip_connect`` edge is the shuffle of its whole input (half through the op, half
  past it), an all-``none`` edge the shuffled bypass alone (zeros where the ops' channels go); each node sums its
  edges weighted by its β. The convolutions are built at C/K channels. Tolerance: float32 rounding of the sums."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  betas = [rng.dirichlet(np.ones(node)).astype(np.float32) for node in range(1, genotypes.NUM_NODES)]
  cell = Cell(partial_channels=2)
  one_hot = lambda op: np.eye(len(genotypes.OPS), dtype=np.float32)[[genotypes.OPS.index(op)] * len(genotypes.EDGES)]
  variables = jax.jit(lambda key: cell.init(key, x, one_hot('none'), False, betas))(jax.random.key(0))
  assert variables['params']['edge0_nor_conv_3x3']['conv']['kernel'].shape == (3, 3, 2, 2)
  apply = jax.jit(lambda weights, betas: cell.apply(variables, x, weights, False, betas))
  for op, edge in (('skip_connect', lambda v: v), ('none', lambda v: np.concatenate([0 * v[..., :2], v[..., 2:]], -1))):
    nodes = [x]
    for node, beta in enumerate(betas, 1):
      nodes.append(sum(b * channel_shuffle_reference(edge(nodes[j]), 2) for j, b in enumerate(beta)))
    np.testing.assert_allclose(apply(one_hot(op), betas), nodes[-1], rtol=1e-6, atol=1e-6, err_msg=op)


def test_edge_normalization_with_unit_betas_is_the_plain_mixture():
  """K=1 with edge weights of 1 is the plain supernet cell (float32 rounding: the sums are grouped differently)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  weights = jax.nn.softmax(jnp.asarray(rng.normal(size=(len(genotypes.EDGES), len(genotypes.OPS))), jnp.float32))
  ones = [np.ones(node, np.float32) for node in range(1, genotypes.NUM_NODES)]
  cell = Cell()
  variables = jax.jit(lambda key: cell.init(key, x, weights, False))(jax.random.key(0))
  plain, normalised = jax.jit(lambda: (cell.apply(variables, x, weights, False),
                                       cell.apply(variables, x, weights, False, ones)))()
  np.testing.assert_allclose(normalised, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('partial_channels,edge_normalization', [(1, False), (2, True)])
def test_exact_hypergradient_is_autodiff_through_the_virtual_step_in_float64(partial_channels, edge_normalization):
  """The bilevel step on the NB201 supernet (the space's problem, softmax relaxation, N=1, C=4, 8x8 images; also
  with PC-DARTS's partial channels and edge normalisation) against ``jax.grad`` of
  ``L_val(w − η(μm + ∇_w L_train(w, α) + λw), α)`` written out here, in float64: with an SGD(1)
  architecture optimizer the step's alpha update is ``−h``. Both arrangements of the passes: equal to rtol 1e-9
  (float64 rounding through a few convolution passes). Slow: three second-order programs of the network to compile
  (minutes on 2 cores); the bilevel step's arithmetic is checked fast on the example space
  (tests/test_example_space.py), what is the space's own here is the network and its loss."""
  eta, momentum, weight_decay = 0.05, 0.9, 5e-4
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    model = Network(C=4, N=1, num_classes=5, affine=False, partial_channels=partial_channels,
                    edge_normalization=edge_normalization)
    batches = [(jnp.asarray(rng.normal(size=(4, 8, 8, 3))), jnp.asarray(rng.integers(0, 5, 4), jnp.int32))
               for _ in range(2)]
    alphas = jnp.asarray(0.5 * rng.normal(size=(len(genotypes.EDGES), len(genotypes.OPS))))  # away from uniform
    if edge_normalization:
      alphas = {genotypes.CELL_KEY: alphas,
                genotypes.EDGES_KEY: [jnp.asarray(rng.normal(size=node)) for node in range(1, genotypes.NUM_NODES)]}
    softmax = lambda alphas: jax.tree.map(lambda a: jax.nn.softmax(a, -1), alphas)
    variables = model.init(jax.random.key(0), batches[0][0], softmax(alphas))
    params, batch_stats = variables['params'], variables['batch_stats']
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}
    problem = search_problem(model, optax.constant_schedule(eta), lambda key, x: x, momentum=momentum,
                             weight_decay=weight_decay)
    weight_tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(eta, momentum=momentum))
    sgd = optax.sgd(1.0)
    state = SearchState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, alphas=alphas,
                        weight_opt_state=weight_tx.init(params), arch_opt_state=sgd.init(alphas),
                        rng=jax.random.key(1), carry=(), weight_tx=weight_tx, arch_tx=sgd)
    m = jax.tree.map(lambda w: jnp.asarray(0.1 * rng.normal(size=w.shape)), params)  # as after a few steps
    state = state.replace(weight_opt_state=optax.tree_utils.tree_set(state.weight_opt_state, trace=m))
    jax.tree.map(np.testing.assert_array_equal, momentum_buffer(state.weight_opt_state), m)

    def loss(params, alphas, batch):
      logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, batch[0], softmax(alphas),
                              train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    def validation_after_virtual_step(alphas):
      g = jax.grad(loss)(params, alphas, batches[0])
      w_prime = jax.tree.map(lambda w, m_, g_: w - eta * (momentum * m_ + g_ + weight_decay * w), params, m, g)
      return loss(w_prime, alphas, batches[1])

    expected = jax.jit(jax.grad(validation_after_virtual_step))(alphas)
    for passes in ('chained', 'direct'):
      step = jax.jit(make_search_step(problem, method='exact', passes=passes, relaxation=relaxations.Relaxation()))
      stepped, _ = step(state, *batches)
      assert {a.dtype for a in jax.tree.leaves(stepped.alphas)} == {jnp.dtype(jnp.float64)}
      jax.tree.map(lambda a, b, e: np.testing.assert_allclose(a - b, e, rtol=1e-9, atol=1e-13, err_msg=passes),
                   alphas, stepped.alphas, expected)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark lookup.


def _arch_results(api_utils, results: dict[str, dict[str, list[float]]]) -> dict[int, dict[str, dict]]:
  """``{index: {hp: ArchResults state dict}}`` of `results` (``{arch: {api dataset: [test accuracy (%) of each
  trial]}}``) for hp '12' and '200', built with the API's own classes (`api_utils`: NAS-Bench-201's or NATS-Bench's
  ``api_utils``, which share them)."""
  arch2infos = {}
  for index, (arch, per_dataset) in enumerate(results.items()):
    arch_results = api_utils.ArchResults(index, arch)
    for dataset, accuracies in per_dataset.items():
      eval_set = 'ori-test' if dataset == 'cifar10' else 'x-test'
      for seed, accuracy in zip((777, 888, 999), accuracies):
        trial = api_utils.ResultsCount(dataset, None, {0: 50.0}, {0: 1.0}, 0.1, 10.0, {'arch_str': arch}, seed, 1,
                                       None)
        trial.update_eval({f'{eval_set}@0': accuracy}, {f'{eval_set}@0': 0.5}, {f'{eval_set}@0': 1.0})
        arch_results.update(dataset, seed, trial)
    arch2infos[index] = {'12': arch_results.state_dict(), '200': arch_results.state_dict()}
  return arch2infos


def write_benchmark(path, results: dict[str, dict[str, list[float]]]) -> None:
  """A NAS-Bench-201 file of `results` (`_arch_results`) in the ``NAS-Bench-201-v1_*.pth`` layout: ``meta_archs``,
  ``arch2infos`` (``'less'``: hp 12, ``'full'``: hp 200), ``evaluated_indexes``."""
  api_utils = pytest.importorskip('nas_201_api.api_utils', reason="the benchmark's package: pip install nas-bench-201")
  torch = pytest.importorskip('torch')
  arch2infos = {index: {'less': hps['12'], 'full': hps['200']}
                for index, hps in _arch_results(api_utils, results).items()}
  torch.save({'meta_archs': list(results), 'arch2infos': arch2infos, 'evaluated_indexes': list(range(len(results)))},
             path)


def write_nats_benchmark(path, results: dict[str, dict[str, list[float]]], *, archive: bool) -> None:
  """A NATS-Bench topology benchmark of `results` (`_arch_results`): its archive directory (``meta.pickle.pbz2``
  with ``meta_archs``, one ``{index:06d}.pickle.pbz2`` of ``{hp: ArchResults}`` per architecture) or its single
  ``.pickle.pbz2`` file (``meta_archs``, ``arch2infos``, ``evaluated_indexes``), written with its ``pickle_save``."""
  api_utils = pytest.importorskip('nats_bench.api_utils', reason="NATS-Bench's package: pip install nats_bench")
  arch2infos = _arch_results(api_utils, results)
  if archive:
    path.mkdir()
    api_utils.pickle_save({'meta_archs': list(results)}, str(path / 'meta.pickle'))
    for index, hps in arch2infos.items():
      api_utils.pickle_save(hps, str(path / f'{index:06d}.pickle'))
  else:
    api_utils.pickle_save({'meta_archs': list(results), 'arch2infos': arch2infos,
                           'evaluated_indexes': list(range(len(results)))}, str(path).removesuffix('.pbz2'))


BENCHMARK = {ALL_SKIP: {'cifar10': [54.0, 55.0], 'cifar100': [15.5], 'ImageNet16-120': [16.0, 17.0, 18.0]},
             ALL_CONV3: {'cifar10': [94.0], 'cifar100': [73.0, 74.0], 'ImageNet16-120': [46.0]}}


@pytest.mark.parametrize('kind', ['nas-bench-201', 'nats-archive', 'nats-file'])
def test_lookup_reports_the_mean_test_accuracy_of_the_benchmarks_trials(kind, tmp_path):
  if kind == 'nas-bench-201':
    path = tmp_path / 'NAS-Bench-201-v1_1-test.pth'
    write_benchmark(path, BENCHMARK)
  else:
    path = tmp_path / ('NATS-tss-test-simple' if kind == 'nats-archive' else 'NATS-tss-test.pickle.pbz2')
    write_nats_benchmark(path, BENCHMARK, archive=kind == 'nats-archive')
  bench = benchmark.open_benchmark(path)
  for arch, per_dataset in BENCHMARK.items():
    got = bench.test_accuracies(genotypes.from_arch_str(arch))
    expected = {name: np.mean(per_dataset[dataset]) / 100 for name, dataset in benchmark.DATASETS.items()}
    assert got == pytest.approx(expected, rel=1e-12)
  with pytest.raises(ValueError, match='has no architecture'):
    bench.test_accuracies(genotypes.from_arch_str(INDEX_0))


def test_lookup_fails_in_one_line_without_the_file_or_the_extra(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match='does not exist: pass NAS-Bench-201'):
    benchmark.open_benchmark(tmp_path / 'missing.pth')
  (tmp_path / 'bench.pth').write_bytes(b'')
  monkeypatch.setitem(sys.modules, 'nas_201_api', None)  # as if not installed
  monkeypatch.setitem(sys.modules, 'nats_bench', None)
  for path in (tmp_path / 'bench.pth', tmp_path):  # NAS-Bench-201's file, NATS-Bench's archive directory
    with pytest.raises(ValueError, match=r"needs the optional extra: pip install 'darts-jax\[nb201\]'"):
      benchmark.open_benchmark(path)
  with pytest.raises(ValueError, match='benchmark.hp must be one of 12, 200'):
    benchmark.open_benchmark(tmp_path / 'bench.pth', hp='100')


# ---------------------------------------------------------------------------------------------------------------------
# Data.


def test_imagenet16_120_reader_keeps_the_first_120_classes(tmp_path):
  """The downsampled ImageNet pickles as the benchmark reads them: labels 1..1000, the first 120 kept as 0..119."""
  folder = tmp_path / 'ImageNet16'
  folder.mkdir()
  rng = np.random.default_rng(0)
  written = {}
  for name in [f'train_data_batch_{i}' for i in range(1, 11)] + ['val_data']:
    labels = rng.integers(1, 1001, 30)
    labels[:3] = [1, 120, 121]
    rows = rng.integers(0, 256, (30, 3 * 16 * 16), dtype=np.uint8)
    with open(folder / name, 'wb') as f:
      pickle.dump({'data': rows, 'labels': labels.tolist()}, f)
    written[name] = rows, labels
  ds = data.load_dataset('imagenet16_120', str(tmp_path))
  rows, labels = zip(*(written[f'train_data_batch_{i}'] for i in range(1, 11)))
  rows, labels = np.concatenate(rows), np.concatenate(labels)
  keep = labels <= 120
  np.testing.assert_array_equal(ds.train_labels, labels[keep] - 1)
  # Channel-major rows: pixel (y, x) of channel c is row[c * 256 + y * 16 + x].
  np.testing.assert_array_equal(ds.train_images[:, 2, 5, 1], rows[keep][:, 256 + 2 * 16 + 5])
  assert ds.train_images.shape[1:] == (16, 16, 3) and ds.num_classes == 120
  assert ds.test_labels.tolist() == [l - 1 for l in written['val_data'][1] if l <= 120]
  with pytest.raises(data.DatasetNotFoundError, match='Imagenet16_train.zip'):
    data.load_dataset('imagenet16_120', str(tmp_path / 'elsewhere'))


# ---------------------------------------------------------------------------------------------------------------------
# Through the tasks and the command line.


def _packaged(name, **overrides):
  config = load_config_module(name, str(REPO / 'configs' / f'{name}.py')).get_config()
  config.update_from_flattened_dict(overrides)
  return config


def _fixture_accuracy(genotype, dataset):
  """The fixture's test accuracy (%) of `genotype` on the API's `dataset`: different for every count of 3x3
  convolutions and skip connections, and per dataset."""
  return (10 + 10 * genotype.count('nor_conv_3x3') + genotype.count('skip_connect')
          + list(benchmark.DATASETS.values()).index(dataset))


@pytest.mark.slow
def test_search_with_the_benchmark_and_retrain_through_the_tasks(data_dir, tmp_path):
  """A tiny search (2 epochs of 3 steps, the Hessian diagnostics) with a benchmark file of all 15,625
  architectures records each epoch's derived cell, its skip connections and its benchmark accuracies, and writes
  the space's artifacts; its genotype retrains."""
  path = tmp_path / 'NAS-Bench-201-all.pth'
  write_benchmark(path, {genotypes.to_arch_str(g): {d: [_fixture_accuracy(g, d)] for d in benchmark.DATASETS.values()}
                         for g in itertools.product(genotypes.OPS, repeat=len(genotypes.EDGES))})
  config = _packaged('search_nb201_quick', **{
      'num_epochs': 2, 'max_steps_per_epoch': 3, 'batch_size': 8, 'data.dir': str(data_dir),
      'data.subset': 0, 'data.image_size': 8, 'diagnostics.hessian_iterations': 2, 'checkpoint_every_minutes': 0.0,
      'progress': False, 'compilation_cache_dir': '', 'benchmark.path': str(path)})
  workdir = tmp_path / 'search'
  search.search(config, workdir)
  records = run_files.read_epoch_records(workdir)
  derived = [genotypes.from_arch_str(r['genotype']['arch']) for r in reporting.read_jsonl(workdir / 'genotypes.jsonl')]
  assert [r['epoch'] for r in records] == [1, 2] and len(derived) == 2
  for record, genotype in zip(records, derived):
    assert record['skip_connect_normal'] == genotype.count('skip_connect')
    assert np.isfinite(record['hessian_eigenvalue'])
    for name, dataset in benchmark.DATASETS.items():
      assert record[f'benchmark_{name}'] == pytest.approx(_fixture_accuracy(genotype, dataset) / 100, rel=1e-12)
  assert load_genotype(str(workdir)) == derived[-1]
  for artifact in ('alphas.npz', 'cell.dot', 'benchmark.png', 'curves.png'):
    assert (workdir / artifact).is_file(), artifact

  retrain_config = _packaged('retrain_nb201_quick', **{
      'genotype': str(workdir), 'num_epochs': 1, 'max_steps_per_epoch': 3, 'batch_size': 8, 'model.init_channels': 4,
      'data.dir': str(data_dir), 'data.subset': 0, 'data.image_size': 8, 'checkpoint_every_minutes': 0.0,
      'progress': False, 'compilation_cache_dir': ''})
  results = retrain.retrain(retrain_config, tmp_path / 'retrain')
  assert results['arch'] == genotypes.to_arch_str(derived[-1]) and results['steps'] == 3
  assert results['params'] == network_cost(derived[-1], C=4, N=1, image_size=8, in_channels=1).params
  assert 0 <= results['test_accuracy'] <= 1


def test_command_line_names_a_missing_benchmark_file_or_a_space_without_one_in_one_line(tmp_path, run_cli_cases):
  """Before any data or compilation: ``--benchmark`` sets ``benchmark.path``; a missing file, and the flag with a
  space that has no benchmark, end in one error line."""
  cases = [
      (['run_search.py', '--config', 'search_nb201_quick', '--workdir', str(tmp_path / 'a'),
        '--benchmark', str(tmp_path / 'NAS-Bench-201-v1_1-096897.pth')],
       'benchmark file ' + str(tmp_path / 'NAS-Bench-201-v1_1-096897.pth') + ' does not exist'),
      (['run_search.py', '--config', 'search_quick', '--workdir', str(tmp_path / 'b'), '--benchmark', 'x.pth'],
       "--benchmark needs a config with benchmark keys (the nb201 space), not space 'cnn'"),
      (['run_search.py', '--config', 'search_nb201_quick', '--workdir', str(tmp_path / 'c'),
        '--config.data.image_size=10'], 'data.image_size (10) must be divisible by 4'),
  ]
  for result, (_, message) in zip(run_cli_cases([{'argv': argv, 'cwd': str(REPO)} for argv, _ in cases]), cases):
    log = result['stdout'] + result['stderr']
    assert result['returncode'] == 1 and message in log and 'Traceback' not in log, log
    assert len([line for line in log.splitlines() if not line.startswith(('I', 'W'))]) == 1, log
