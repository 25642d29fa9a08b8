"""Tests for resource-aware search: the analytic counts (darts_jax.cnn.cost) against the built networks and XLA's
cost analysis, the latency table (darts_jax.cnn.latency), the cost CLI, the cost term of the architecture objective
(its gradient, its place in the search step, the search's cost records) and the accuracy-cost ranking."""
import json

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_search import MEAN, STD, TinySupernet, _batches, tiny_config, tiny_supernet  # noqa: F401 (autouse)

from darts_jax.cli import compare as compare_cli
from darts_jax.cli import cost as cost_cli
from darts_jax import data
from darts_jax.bilevel import step as bilevel_step
from darts_jax.spaces import cnn as cnn_space
from darts_jax.cnn import cost, latency, networks
from darts_jax.analysis import compare
from darts_jax.dynamics import diagnostics
from darts_jax.cnn.genotypes import DARTS_V2, EVAL_PRIMITIVES, PRIMITIVES, Genotype
from darts_jax.tasks import search
from darts_jax.training import optimizers, reporting

# One node per cell (as tests/test_networks.py's): a network of few distinct units.
SMALL = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
                 reduce=[('max_pool_3x3', 0), ('skip_connect', 1)], reduce_concat=[2])
# Every op a network can build, on cell inputs (stride 2 in reductions) and on nodes.
_OPS = EVAL_PRIMITIVES[1:] + EVAL_PRIMITIVES[1:2]
ALL_OPS = Genotype(normal=[(op, i % 3) for i, op in enumerate(_OPS)], normal_concat=[2, 3, 4, 5, 6],
                   reduce=[(op, min((i + 1) % 3, i // 2 + 1)) for i, op in enumerate(_OPS)],
                   reduce_concat=[3, 4, 5, 6])


def _params(net, x_shape, *args):
  x = jnp.zeros(x_shape)
  return jax.eval_shape(lambda: net.init(jax.random.key(0), x, *args, train=False))['params']


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and multiply-adds.


def test_the_papers_networks():
  # Parameters: the original's counts (test_networks.py finds them in the built networks). Multiply-adds: the
  # paper's Table 3 says 574M for the ImageNet network; convolutions and the classifier come to 529.9M (README).
  assert cost.network_cost(DARTS_V2, network='cifar', C=36, layers=20) == cost.Cost(3_349_342, 528_359_040)
  # With the auxiliary head (test_networks.py's count of it).
  assert cost.network_cost(DARTS_V2, network='cifar', C=36, layers=20, auxiliary=True).params == 3_825_768
  assert cost.network_cost(DARTS_V2, network='imagenet', C=48, layers=14, num_classes=1000,
                           image_size=224) == cost.Cost(4_718_752, 529_911_552)
  assert cost.total_cost(cost.supernet_units(C=16, layers=8)).params == 1_930_618  # README's SearchNetwork count


@pytest.mark.parametrize('network, image_size', [('cifar', 32), ('imagenet', 224)])
def test_parameters_are_those_of_the_built_network(network, image_size):
  # Every op of EVAL_PRIMITIVES at both strides, cells of 5 and 4 outputs, auxiliary heads included.
  net_type = networks.NetworkCIFAR if network == 'cifar' else networks.NetworkImageNet
  net = net_type(ALL_OPS, C=4, num_classes=7, layers=3, auxiliary=True)
  params = _params(net, (1, image_size, image_size, 3))
  kw = dict(network=network, C=4, layers=3, num_classes=7, image_size=image_size)
  assert cost.network_cost(ALL_OPS, **kw).params == networks.count_params(params)
  assert cost.network_cost(ALL_OPS, auxiliary=True, **kw).params == networks.count_params(params, exclude='@')


def _xla_product_flops(fn, *args):
  """XLA's cost analysis (flops) of the convolutions and matrix products of ``fn``'s program, each lowered alone:
  what XLA counts for them, without the elementwise ops, reductions and pools around them."""
  cache = {}

  def flops(eqn):
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    key = (eqn.primitive.name, str(avals), str(eqn.params))
    if key not in cache:
      lowered = jax.jit(lambda *a: eqn.primitive.bind(*a, **eqn.params)).lower(*avals)
      cache[key] = lowered.cost_analysis()['flops']
    return cache[key]

  def walk(jaxpr):
    total = 0.0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
        total += flops(eqn)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else [value]:
          if hasattr(sub, 'eqns'):
            total += walk(sub)
          elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
            total += walk(sub.jaxpr)
    return total

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


UNITS = ([cost.Unit(op, 4, 4, 8, 8, stride) for op in EVAL_PRIMITIVES for stride in (1, 2)] + [
    cost.Unit(cost.STEM_CIFAR, 3, 12, 8, 8), cost.Unit(cost.STEM_IMAGENET, 3, 8, 32, 32),
    cost.Unit(cost.PREPROCESS, 12, 4, 8, 8), cost.Unit(cost.PREPROCESS_REDUCE, 16, 4, 8, 8, 2),
    cost.Unit(cost.CLASSIFIER, 16, 10, 2, 2), cost.Unit(cost.AUXILIARY_CIFAR, 16, 10, 8, 8),
    cost.Unit(cost.AUXILIARY_IMAGENET, 16, 10, 7, 7)])


def test_multiply_adds_of_every_op_are_xlas_count():
  # XLA counts a multiply-add as 2 flops, and only the taps that read the image (count_padding=False).
  for unit in UNITS:
    module = latency._UnitModule(unit, depthwise_impl='xla')  # convolutions as XLA convolutions
    x = jax.ShapeDtypeStruct((1, unit.height, unit.width, unit.in_channels), jnp.float32)
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    assert _xla_product_flops(module.apply, variables, x) == 2 * cost.unit_cost(unit, count_padding=False).macs, unit
  # The papers' convention counts the padding taps too: sep_conv_3x3, C=4, 8x8, stride 1 is two units of a 3x3
  # depthwise (64 positions x 9 taps x 4 channels) and a 1x1 (64 x 4 x 4).
  assert cost.unit_cost(cost.Unit('sep_conv_3x3', 4, 4, 8, 8)).macs == 2 * (64 * 9 * 4 + 64 * 16)


@pytest.mark.parametrize('network, image_size', [('cifar', 8), ('imagenet', 32)])
def test_network_multiply_adds_are_xlas_count(network, image_size):
  # The resolutions, strides and channels of every cell, stem and classifier, assembled.
  net_type = networks.NetworkCIFAR if network == 'cifar' else networks.NetworkImageNet
  net = net_type(DARTS_V2, C=4, num_classes=10, layers=3, depthwise_impl='xla', scan=False)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
  xla = _xla_product_flops(lambda v, x: net.apply(v, x, train=False), variables, x)
  expected = cost.network_cost(DARTS_V2, network=network, C=4, layers=3, image_size=image_size, count_padding=False)
  assert xla == 2 * expected.macs


# ---------------------------------------------------------------------------------------------------------------------
# Latency, and the CLI.


def test_latency_table_is_measured_once_cached_and_used_by_the_cli(tmp_path, capsys):
  # One cell (a reduction): stem, preprocessing, max pool and factorized reduction, classifier.
  units = cost.network_units(SMALL, C=4, layers=1, image_size=8, in_channels=1)
  table = latency.LatencyTable(tmp_path, repeats=1, warmup=1)
  estimate = latency.estimate_latency(units, table)
  assert table.measured == len(set(units)) + 1  # each distinct unit once, and the dispatch
  assert estimate > table.dispatch_ms > 0
  table.save()
  saved = json.loads(table.path.read_text())
  assert (saved['device_kind'], saved['jax_version']) == (jax.devices()[0].device_kind, jax.__version__)
  assert jax.__version__ in table.path.name and len(saved['entries']) == table.measured
  again = latency.LatencyTable(tmp_path, repeats=1)
  assert latency.estimate_latency(units, again) == estimate and again.measured == 0


  # The CLI reads the same table, measures only the whole network.
  genotype_json = json.dumps(SMALL._asdict())
  cost_cli.main(['--genotype', genotype_json, '--C', '4', '--layers', '1', '--image_size', '8', '--in_channels', '1',
                 '--latency', '--repeats', '1', '--latency_cache', str(tmp_path), '--json'])
  result = json.loads(capsys.readouterr().out)
  total = cost.total_cost(units)
  assert (result['params'], result['macs']) == (total.params, total.macs)
  assert result['latency_ms']['estimate'] == pytest.approx(estimate) and result['latency_units_measured'] == 0
  assert result['latency_ms']['measured'] > 0
  assert result['latency_error'] == pytest.approx(estimate / result['latency_ms']['measured'] - 1)


class _FakeTable:
  """A `LatencyTable`'s interface with made-up times: a unit's is its key's length in µs."""
  dispatch_ms = 0.02

  def lookup(self, unit):
    return len(unit.key) / 1000


def test_latency_cost_term_counts_each_choice_beyond_the_dispatch_and_one_dispatch_in_fixed():
  table = _FakeTable()
  arch = latency.architecture_latency(table, C=4, layers=1, image_size=8, in_channels=1)  # one reduction cell
  cell = cost.cell_shapes(4, 1, (12, 12), (8, 8))[0]
  for edge, source in ((0, 0), (4, 2)):  # node 0's first input (stride 2), node 1's input from node 0 (stride 1)
    unit = cost.edge_unit('sep_conv_5x5', cell, source)
    assert arch.tables['reduce'][edge, PRIMITIVES.index('sep_conv_5x5')] == pytest.approx(table.lookup(unit) - 0.02)
  assert not arch.tables['normal'].any()
  # Every node on both cell inputs by dil_conv_3x3: the expected latency of that choice (each input edge kept) is
  # estimate_latency of the genotype's network.
  op = 'dil_conv_3x3'
  genotype = Genotype(normal=[(op, 0), (op, 1)] * 4, normal_concat=[2, 3, 4, 5], reduce=[(op, 0), (op, 1)] * 4,
                      reduce_concat=[2, 3, 4, 5])
  on_inputs = np.array([[float(source < 2)] for node in range(4) for source in range(2 + node)])
  weights = {k: on_inputs * np.eye(8)[[PRIMITIVES.index(op)] * 14] for k in ('normal', 'reduce')}
  chosen = float(cost.expected_cost(weights, cost.ArchitectureCost(arch.tables, np.ones(14), arch.fixed)))
  units = cost.network_units(genotype, C=4, layers=1, image_size=8, in_channels=1)
  assert chosen == pytest.approx(latency.estimate_latency(units, table), rel=1e-6)


def test_cost_cli_prints_the_papers_network_and_refuses_bad_input(capsys):
  cost_cli.main(['--genotype', 'DARTS_V2', '--network', 'imagenet'])
  out = capsys.readouterr().out
  assert 'NetworkImageNet(C=48, layers=14, 1000 classes) on 224x224x3' in out
  assert '4,718,752' in out and '529,911,552' in out
  for argv, message in ((['--genotype', 'DARTS_V9'], 'unknown genotype name'),
                        (['--genotype', 'DARTS_V2', '--C', '0'], '--C must be positive')):
    with pytest.raises(SystemExit, match=message) as exit_info:
      cost_cli.main(argv)
    assert str(exit_info.value).count('\n') == 0


# ---------------------------------------------------------------------------------------------------------------------
# The cost term.


def _macs_model(**kw):
  return cost.architecture_cost(lambda u: cost.unit_cost(u).macs, **{
      'C': 4, 'layers': 5, 'image_size': 16, 'in_channels': 1, **kw})


@pytest.mark.parametrize('op', ['sep_conv_3x3', 'dil_conv_5x5', 'max_pool_3x3'])
def test_expected_cost_of_a_decided_supernet_is_its_genotypes(op):
  # Every edge carries `op`: whichever two inputs a node keeps, the cell is the genotype below (a stride-2 conv on
  # a cell input costs what a stride-1 conv on a node does: both write the halved map).
  genotype = Genotype(normal=[(op, 0), (op, 1)] * 4, normal_concat=[2, 3, 4, 5], reduce=[(op, 0), (op, 1)] * 4,
                      reduce_concat=[2, 3, 4, 5])
  weights = {k: np.eye(8)[[PRIMITIVES.index(op)] * 14] for k in ('normal', 'reduce')}
  for metric in ('macs', 'params'):
    arch = cost.architecture_cost(lambda u: getattr(cost.unit_cost(u), metric), C=4, layers=5, image_size=16,
                                  in_channels=1)
    expected = getattr(cost.network_cost(genotype, C=4, layers=5, image_size=16, in_channels=1), metric)
    assert float(cost.expected_cost(weights, arch)) == pytest.approx(expected, rel=1e-6)  # float32 sums


@pytest.mark.parametrize('form, options', [('linear', {}), ('hinge', {}),
                                           ('mnasnet', dict(mnasnet_alpha=-0.07, mnasnet_beta=-0.5))])
def test_cost_term_gradient_matches_finite_differences(form, options):
  arch = _macs_model()
  with jax.enable_x64(True):
    alphas = {k: jnp.asarray(np.random.default_rng(i).normal(size=(14, 8))) for i, k in enumerate(('normal',
                                                                                                   'reduce'))}
    uniform = float(cost.expected_cost({k: np.full((14, 8), 1 / 8) for k in alphas}, arch))
    # Target below E: the hinge and MnasNet's beta are active, away from their kinks.
    term = cost.make_cost_penalty(arch, target=0.8 * uniform, form=form, weight=2.0, **options)
    penalty = lambda alphas: term(jax.tree.map(jax.nn.softmax, alphas))
    flat, unravel = jax.flatten_util.ravel_pytree(alphas)
    gradient = jax.flatten_util.ravel_pytree(jax.jit(jax.grad(penalty))(alphas))[0]
    # Directional derivatives along 16 random directions, by central differences: O(eps^2) truncation (~1e-10
    # here) and float64 rounding / eps (~1e-11).
    eps, directions = 1e-5, jnp.asarray(np.random.default_rng(2).normal(size=(16, flat.size)))
    value = jax.jit(jax.vmap(lambda x: penalty(unravel(x))))
    central = (value(flat + eps * directions) - value(flat - eps * directions)) / (2 * eps)
    np.testing.assert_allclose(directions @ gradient, central, rtol=1e-6, atol=1e-9)
    assert float(jnp.abs(central).max()) > 1e-2  # the term does move the alphas


def test_cost_term_enters_the_architecture_step_and_lowers_the_expected_cost():
  # First order: the term enters every method through the same architecture update (search_step.arch_step).
  arch = _macs_model()
  target = 0.5 * float(cost.expected_cost({k: np.full((14, 8), 1 / 8) for k in ('normal', 'reduce')}, arch))
  term = cost.make_cost_penalty(arch, target=target, weight=20.0)
  penalty = lambda alphas: term(jax.tree.map(jax.nn.softmax, alphas))  # TinySupernet mixes the raw alphas
  model = TinySupernet()
  schedule = optax.constant_schedule(0.025)
  # Plain SGD at rate 1 on the alphas: the architecture update is minus the gradient, so the two runs' updates
  # differ by exactly the cost term's gradient.
  state = cnn_space.create_search_state(jax.random.key(0), model, (8, 8, 1),
                                          optimizers.weight_optimizer(schedule), optax.sgd(1.0))
  preprocess = data.make_preprocess(MEAN, STD, augment=False)
  runs = {}
  for name, arch_penalty in (('plain', None), ('cost', penalty)):
    step = jax.jit(bilevel_step.make_search_step(cnn_space.search_problem(model, schedule, preprocess), method='first_order',
        arch_penalty=arch_penalty and (lambda alphas, weights, step, term=arch_penalty: term(alphas))))
    states = [state]
    for train, val in _batches(3):
      states.append(step(states[-1], train, val)[0])
    runs[name] = states
  difference = jax.tree.map(lambda a, b: a - b, runs['cost'][1].alphas, runs['plain'][1].alphas)
  jax.tree.map(lambda d, g: np.testing.assert_allclose(d, -g, rtol=1e-5, atol=1e-7), difference,
               jax.jit(jax.grad(penalty))(state.alphas))
  expected = {name: float(cost.expected_cost(diagnostics.softmax_weights(states[-1].alphas), arch))
              for name, states in runs.items()}
  assert expected['cost'] < 0.95 * expected['plain']


def test_search_adds_the_configured_cost_term(data_dir, tmp_path, monkeypatch):
  # The step `search.search` builds gets config.cost's penalty (captured; the search stops there). Its records and
  # genotype.json: tests/test_search.py's reference run.
  config = tiny_config(data_dir, **{'cost.weight': 3.0, 'cost.target': 1e5, 'cost.form': 'hinge'})
  captured = {}

  def capture(*args, **kwargs):
    captured.update(kwargs)
    raise KeyboardInterrupt  # not a ValueError: nothing may catch it on the way out

  monkeypatch.setattr(search, 'make_search_step', capture)
  with pytest.raises(KeyboardInterrupt):
    search.search(config, tmp_path)
  arch = cost.architecture_cost(lambda u: cost.unit_cost(u).macs, C=4, layers=3, image_size=16, in_channels=1)
  weights = {k: np.full((14, 8), 1 / 8, np.float32) for k in ('normal', 'reduce')}
  expected = float(cost.expected_cost(weights, arch))
  # The term is taken on the mixing weights the relaxation gives (uniform here), not on the alphas.
  assert float(captured['arch_penalty'](None, weights, 0)) == pytest.approx(3.0 * max(0.0, expected / 1e5 - 1), rel=1e-6)
  assert json.loads((tmp_path / 'cost_model.json').read_text())['fixed'] == arch.fixed
  with pytest.raises(ValueError, match='cost.target'):
    search.search(tiny_config(data_dir, **{'cost.weight': 1.0}), tmp_path / 'no_target')


# ---------------------------------------------------------------------------------------------------------------------
# Ranking.


def test_mnasnet_score_and_pareto_front():
  assert cost.mnasnet_score(0.9, 50.0, 100.0) == pytest.approx(0.9 * 0.5 ** -0.07)
  assert cost.mnasnet_score(0.9, 200.0, 100.0, alpha=0.0, beta=-1.0) == pytest.approx(0.45)
  # (accuracy, cost): the second is dominated by the first, the fourth ties the first and costs more.
  assert cost.pareto_front([(0.9, 10), (0.8, 20), (0.95, 30), (0.9, 11)]) == [True, False, True, False]


def test_compare_ranks_retrained_genotypes(tmp_path, capsys):
  for name, accuracy, macs in (('small', 0.90, 2e6), ('worse', 0.85, 3e6), ('big', 0.95, 8e6)):
    (tmp_path / name).mkdir()
    reporting.write_json(tmp_path / name / 'results.json', {'test_accuracy': accuracy, 'params': 1000, 'macs': macs})
  compare_cli.main([str(tmp_path / n) for n in ('small', 'worse', 'big')] + [
      '--target', '4e6', '--pareto_out', str(tmp_path / 'pareto.png')])
  header, *rows, legend = capsys.readouterr().out.splitlines()
  assert header.split() == list(compare.RANK_COLUMNS)
  assert [r.split()[0] for r in rows] == ['small', 'big', 'worse']  # by score: 0.90*0.5^-0.07 > 0.95*2^-0.07
  assert [r.rstrip().endswith('*') for r in rows] == [True, True, False]
  assert 'macs / 4e+06' in legend and (tmp_path / 'pareto.png').read_bytes().startswith(b'\x89PNG')
