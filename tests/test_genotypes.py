"""Tests for darts_jax.cnn.genotypes (derivation, published genotypes) and darts_jax.cnn.genotype_formats (parsing)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax.cnn import genotypes
from darts_jax.cnn.genotypes import (
    DARTS_V2,
    EVAL_PRIMITIVES,
    KNOWN_GENOTYPES,
    PRIMITIVES,
    derive_genotype,
)
from darts_jax.cnn.genotype_formats import genotype_from_json, genotype_from_repr, genotype_to_json, parse_genotype

NONE = PRIMITIVES.index('none')


def _original_parse(weights, steps=4):
  """``Network.genotype()._parse`` of quark0/darts cnn/model_search.py, verbatim."""
  gene = []
  n = 2
  start = 0
  for i in range(steps):
    end = start + n
    W = weights[start:end].copy()
    edges = sorted(
        range(i + 2),
        key=lambda x: -max(
            W[x][k] for k in range(len(W[x])) if k != PRIMITIVES.index('none')
        ),
    )[:2]
    for j in edges:
      k_best = None
      for k in range(len(W[j])):
        if k != PRIMITIVES.index('none'):
          if k_best is None or W[j][k] > W[j][k_best]:
            k_best = k
      gene.append((PRIMITIVES[k_best], j))
    start = end
    n += 1
  return gene


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _cell(alphas_normal):
  """Derives with the same alphas for both cells and returns the normal cell."""
  a = np.asarray(alphas_normal, dtype=np.float64)
  return derive_genotype({'normal': a, 'reduce': a}).normal


def test_primitives_order():
  assert PRIMITIVES == (
      'none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
      'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5',
  )


# --- derive_genotype -----------------------------------------------------------


def test_all_ties_pick_lower_inputs_and_first_non_none_op():
  cell = _cell(np.zeros((14, 8)))
  assert cell == [('max_pool_3x3', 0), ('max_pool_3x3', 1)] * 4


def test_none_is_ignored_when_ranking_edges_and_ops():
  a = np.zeros((14, 8))
  # Node 1 reads rows 2, 3, 4 (inputs 0, 1, 2). Input 0 is dominated by
  # 'none', so its best real op is weak even though its max logit is largest.
  a[2, NONE] = 10.0
  a[3, PRIMITIVES.index('sep_conv_5x5')] = 1.0
  a[4, PRIMITIVES.index('dil_conv_3x3')] = 0.5
  cell = _cell(a)
  assert cell[2:4] == [('sep_conv_5x5', 1), ('dil_conv_3x3', 2)]


def test_strongest_edge_comes_first():
  a = np.zeros((14, 8))
  a[0, PRIMITIVES.index('avg_pool_3x3')] = 1.0  # input 0 of node 0
  a[1, PRIMITIVES.index('skip_connect')] = 2.0  # input 1 of node 0
  assert _cell(a)[:2] == [('skip_connect', 1), ('avg_pool_3x3', 0)]


def test_op_ties_keep_first_op():
  a = np.zeros((14, 8))
  a[0, PRIMITIVES.index('dil_conv_5x5')] = 3.0
  a[0, PRIMITIVES.index('sep_conv_3x3')] = 3.0
  assert _cell(a)[0] == ('sep_conv_3x3', 0)


def test_edges_are_ranked_by_softmax_weight_not_logit():
  a = np.zeros((14, 8))
  # Row of input 0 of node 1: every logit 5, so each weight is 1/8.
  a[2] = 5.0
  # Row of input 2: one logit 1, weight e/(e+7) ~ 0.28 > 1/8.
  a[4, PRIMITIVES.index('sep_conv_3x3')] = 1.0
  assert _cell(a)[2:4] == [('sep_conv_3x3', 2), ('max_pool_3x3', 0)]


@pytest.mark.parametrize('seed', range(50))
def test_matches_original_rule_on_random_alphas(seed):
  rng = np.random.default_rng(seed)
  # Odd seeds draw small integer logits so ties between ops and between edges
  # are frequent; even seeds draw continuous logits at DARTS's scale and above.
  if seed % 2:
    normal = rng.integers(0, 3, (14, 8)).astype(np.float64)
    reduce = rng.integers(0, 3, (14, 8)).astype(np.float64)
  else:
    normal = rng.normal(size=(14, 8)) * 10.0 ** rng.uniform(-3, 1)
    reduce = rng.normal(size=(14, 8)) * 10.0 ** rng.uniform(-3, 1)
  g = derive_genotype({'normal': normal, 'reduce': reduce})
  assert g.normal == _original_parse(_softmax(normal))
  assert g.reduce == _original_parse(_softmax(reduce))
  assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]


def test_accepts_jax_arrays():
  a = np.random.default_rng(0).normal(size=(14, 8))
  expected = derive_genotype({'normal': a, 'reduce': -a})
  got = derive_genotype({'normal': jnp.asarray(a), 'reduce': jnp.asarray(-a)})
  assert got == expected


def test_other_step_counts_and_multiplier():
  a = np.random.default_rng(1).normal(size=(genotypes.num_edges(3), 8))
  g = derive_genotype({'normal': a, 'reduce': a}, steps=3, multiplier=2)
  assert len(g.normal) == 6
  assert g.normal_concat == [3, 4]
  assert g.normal == _original_parse(_softmax(a), steps=3)


@pytest.mark.parametrize(
    'alphas, match',
    [
        ({'normal': np.zeros((14, 8))}, "needs keys 'normal' and 'reduce'"),
        (
            {'normal': np.zeros((14, 7)), 'reduce': np.zeros((14, 8))},
            r"alphas\['normal'\] has shape \(14, 7\); expected \(14, 8\)",
        ),
        (
            {'normal': np.zeros((14, 8)), 'reduce': np.full((14, 8), np.nan)},
            r"alphas\['reduce'\] contains NaN",
        ),
    ],
)
def test_derive_rejects_bad_alphas(alphas, match):
  with pytest.raises(ValueError, match=match):
    derive_genotype(alphas)


# --- published genotypes ---------------------------------------------------------


def test_known_genotypes_present_and_valid():
  assert set(KNOWN_GENOTYPES) >= {'NASNet', 'AmoebaNet', 'DARTS_V1', 'DARTS_V2'}
  assert genotypes.DARTS is DARTS_V2
  for name, g in KNOWN_GENOTYPES.items():
    assert genotypes.validate_genotype(g) == g, name


def test_known_genotypes_exact_entries():
  # Spot checks against quark0/darts cnn/genotypes.py.
  assert DARTS_V2.normal[7] == ('dil_conv_3x3', 2)
  assert DARTS_V2.reduce[3] == ('max_pool_3x3', 1)
  assert DARTS_V2.reduce[7] == ('max_pool_3x3', 1)
  assert genotypes.DARTS_V1.normal[:2] == [('sep_conv_3x3', 1), ('sep_conv_3x3', 0)]
  assert genotypes.DARTS_V1.reduce[7] == ('avg_pool_3x3', 0)
  assert genotypes.NASNet.reduce[1] == ('sep_conv_7x7', 0)
  assert genotypes.NASNet.normal_concat == [2, 3, 4, 5, 6]
  assert genotypes.NASNet.reduce_concat == [4, 5, 6]
  assert genotypes.AmoebaNet.reduce[8:] == [('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)]
  assert genotypes.AmoebaNet.reduce_concat == [3, 4, 6]


def test_eval_primitives_cover_every_known_op():
  used = {op for g in KNOWN_GENOTYPES.values() for op, _ in g.normal + g.reduce}
  assert used <= set(EVAL_PRIMITIVES)
  assert set(PRIMITIVES) <= set(EVAL_PRIMITIVES)
  assert {'sep_conv_7x7', 'conv_7x1_1x7'} <= set(EVAL_PRIMITIVES)


# --- serialization ---------------------------------------------------------------

# DARTS_V2 as the original code prints it (concat as range(2, 6)).
ORIGINAL_PRINTED_DARTS_V2 = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=range(2, 6))"
)


def test_parse_original_printed_repr():
  g = parse_genotype(ORIGINAL_PRINTED_DARTS_V2)
  assert g == DARTS_V2
  assert g.normal_concat == [2, 3, 4, 5] and isinstance(g.normal_concat, list)


@pytest.mark.parametrize('name', sorted(KNOWN_GENOTYPES))
def test_round_trips(name):
  g = KNOWN_GENOTYPES[name]
  assert parse_genotype(name) == g
  assert genotype_from_json(genotype_to_json(g)) == g
  assert parse_genotype(genotype_to_json(g)) == g
  assert parse_genotype(repr(g)) == g
  with_range = g._replace(normal_concat=range(2, 2 + len(g.normal) // 2))
  assert genotype_from_repr(repr(with_range)).normal_concat == list(
      range(2, 2 + len(g.normal) // 2)
  )


def test_derived_genotype_round_trips_through_json():
  a = np.random.default_rng(3).normal(size=(14, 8))
  g = derive_genotype({'normal': a, 'reduce': a[::-1]})
  assert genotype_from_json(genotype_to_json(g)) == g


def test_json_schema():
  obj = json.loads(genotype_to_json(DARTS_V2))
  assert list(obj) == ['normal', 'normal_concat', 'reduce', 'reduce_concat']
  assert obj['normal'][0] == ['sep_conv_3x3', 0]
  assert obj['reduce_concat'] == [2, 3, 4, 5]


def test_repr_variants():
  v2 = DARTS_V2
  # A line pasted from genotypes.py, with a module prefix and positional args.
  text = (
      f'DARTS_V2 = genotypes.Genotype({v2.normal!r}, {v2.normal_concat!r}, '
      f'reduce={v2.reduce!r}, reduce_concat=range(2, 6))'
  )
  assert parse_genotype(text) == v2
  assert parse_genotype(f'  {repr(v2)}\n') == v2


def _json_with(**changes):
  obj = json.loads(genotype_to_json(DARTS_V2))
  obj.update(changes)
  return json.dumps(obj)


def _repr_with(**changes):
  return repr(DARTS_V2._replace(**changes))


_NORMAL = [list(p) for p in DARTS_V2.normal]


@pytest.mark.parametrize(
    'text, match',
    [
        (
            _json_with(normal=_NORMAL[:3] + [['foo', 1]] + _NORMAL[4:]),
            r"unknown op name 'foo' at normal\[3\]",
        ),
        (
            _repr_with(reduce=DARTS_V2.reduce[:5] + [('conv_3x3', 2)] + DARTS_V2.reduce[6:]),
            r"unknown op name 'conv_3x3' at reduce\[5\]",
        ),
        (
            _json_with(normal=[['sep_conv_3x3', 0], ['sep_conv_3x3', 2]] + _NORMAL[2:]),
            r'input index 2 at normal\[1\] is out of range: node 0 may take inputs 0..1',
        ),
        (
            _repr_with(normal=[('sep_conv_3x3', -1)] + DARTS_V2.normal[1:]),
            r'input index -1 at normal\[0\] is out of range',
        ),
        (
            _json_with(normal=[['sep_conv_3x3', True]] + _NORMAL[1:]),
            r'input index True at normal\[0\] is out of range',
        ),
        (_json_with(normal=_NORMAL[:3]), 'pairs per node, got 3 pairs'),
        (_json_with(normal=[]), 'pairs per node, got 0 pairs'),
        (
            _json_with(normal=[['sep_conv_3x3']] + _NORMAL[1:]),
            r'normal\[0\] must be an \(op_name, input_index\) pair',
        ),
        (_json_with(normal='sep_conv_3x3'), 'normal must be a list of'),
        (_json_with(reduce_concat=[2, 3, 4, 6]), 'concat index 6 in reduce_concat is out of range'),
        (_json_with(normal_concat=[1, 2]), 'concat index 1 in normal_concat'),
        (_json_with(normal_concat=[2, 2]), 'concat index 2 repeated in normal_concat'),
        (_json_with(normal_concat=[]), 'normal_concat is empty'),
        (_repr_with(reduce_concat=range(2, 10**12)), 'concat index 6 in reduce_concat'),
        (_json_with(foo=1), "unknown field 'foo'"),
        ('{"normal": []}', "missing field 'normal_concat'"),
        ('{"normal": [', 'invalid genotype JSON'),
        ('[1, 2]', 'not a known genotype name, JSON, nor a Genotype'),
        ('DARTS_V3', "unknown genotype name 'DARTS_V3'"),
        ('hello world', 'not a known genotype name, JSON, nor a Genotype'),
        ('Genotype(1, 2, 3, 4, 5)', 'takes 4 fields, got 5 positional'),
        (
            repr(DARTS_V2)[:-1] + ', normal=[])',
            "field 'normal' given twice",
        ),
        (
            repr(DARTS_V2).replace('normal_concat=[2, 3, 4, 5]', 'normal_concat=list(x)'),
            'normal_concat must be a literal',
        ),
    ],
)
def test_rejects_malformed(text, match):
  with pytest.raises(ValueError, match=match):
    parse_genotype(text)


def test_json_must_be_an_object():
  with pytest.raises(ValueError, match='must be an object'):
    genotype_from_json('[1, 2]')


def test_validate_genotype_checks_ops_against_given_primitives():
  with pytest.raises(ValueError, match="unknown op name 'sep_conv_7x7' at reduce"):
    genotypes.validate_genotype(genotypes.NASNet, primitives=PRIMITIVES)


def test_malicious_input_is_never_executed(tmp_path):
  marker = tmp_path / 'pwned'
  payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
  texts = [
      payload,
      f'__import__("os").system("touch {marker}")',
      _repr_with().replace('normal_concat=[2, 3, 4, 5]', f'normal_concat={payload}'),
      _repr_with().replace("('dil_conv_3x3', 2)", f'({payload}, 2)'),
      f'Genotype(normal=[], normal_concat=range({payload}), reduce=[], reduce_concat=[])',
      f'{payload}; ' + repr(DARTS_V2),
      f'{payload}(Genotype)',
  ]
  for text in texts:
    with pytest.raises(ValueError):
      parse_genotype(text)
  assert not marker.exists()
