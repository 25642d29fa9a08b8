"""Tests for the genotype formats of other tools (darts_jax.cnn.genotype_formats, darts_jax.cli.genotypes): NNI's
architecture dict and pt.darts's genotype text, with the examples their documentation prints, and the conversion
CLI."""
import json
import pytest

from darts_jax.cli import genotypes as genotypes_cli
from darts_jax.cnn import genotype_formats
from darts_jax.cnn.genotypes import Genotype

# The two architecture dicts NNI's DARTS tutorial (examples/tutorials/darts.py) prints, verbatim.
NNI_TUTORIAL_SEARCHED = {
    'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': 1, 'normal/op_2_1': 'sep_conv_3x3', 'normal/input_2_1': 0,
    'normal/op_3_0': 'sep_conv_3x3', 'normal/input_3_0': 1, 'normal/op_3_1': 'sep_conv_3x3', 'normal/input_3_1': 2,
    'normal/op_4_0': 'sep_conv_3x3', 'normal/input_4_0': 1, 'normal/op_4_1': 'sep_conv_3x3', 'normal/input_4_1': 0,
    'normal/op_5_0': 'sep_conv_3x3', 'normal/input_5_0': 1, 'normal/op_5_1': 'max_pool_3x3', 'normal/input_5_1': 0,
    'reduce/op_2_0': 'sep_conv_3x3', 'reduce/input_2_0': 0, 'reduce/op_2_1': 'sep_conv_3x3', 'reduce/input_2_1': 1,
    'reduce/op_3_0': 'dil_conv_5x5', 'reduce/input_3_0': 2, 'reduce/op_3_1': 'sep_conv_3x3', 'reduce/input_3_1': 0,
    'reduce/op_4_0': 'dil_conv_5x5', 'reduce/input_4_0': 2, 'reduce/op_4_1': 'sep_conv_5x5', 'reduce/input_4_1': 1,
    'reduce/op_5_0': 'sep_conv_5x5', 'reduce/input_5_0': 4, 'reduce/op_5_1': 'dil_conv_5x5', 'reduce/input_5_1': 2}
NNI_TUTORIAL_REPRODUCED = {
    'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': 0, 'normal/op_2_1': 'sep_conv_3x3', 'normal/input_2_1': 1,
    'normal/op_3_0': 'sep_conv_3x3', 'normal/input_3_0': 1, 'normal/op_3_1': 'skip_connect', 'normal/input_3_1': 0,
    'normal/op_4_0': 'sep_conv_3x3', 'normal/input_4_0': 0, 'normal/op_4_1': 'max_pool_3x3', 'normal/input_4_1': 1,
    'normal/op_5_0': 'sep_conv_3x3', 'normal/input_5_0': 0, 'normal/op_5_1': 'sep_conv_3x3', 'normal/input_5_1': 1,
    'reduce/op_2_0': 'max_pool_3x3', 'reduce/input_2_0': 0, 'reduce/op_2_1': 'sep_conv_5x5', 'reduce/input_2_1': 1,
    'reduce/op_3_0': 'dil_conv_5x5', 'reduce/input_3_0': 2, 'reduce/op_3_1': 'max_pool_3x3', 'reduce/input_3_1': 0,
    'reduce/op_4_0': 'max_pool_3x3', 'reduce/input_4_0': 0, 'reduce/op_4_1': 'sep_conv_3x3', 'reduce/input_4_1': 2,
    'reduce/op_5_0': 'max_pool_3x3', 'reduce/input_5_0': 0, 'reduce/op_5_1': 'skip_connect', 'reduce/input_5_1': 2}
ALL_NODES = [2, 3, 4, 5]

# pt.darts's README, "Found architectures" (CIFAR-10), verbatim.
PT_DARTS_CIFAR10 = """Genotype(
    normal=[[('sep_conv_3x3', 0), ('dil_conv_5x5', 1)], [('skip_connect', 0), ('dil_conv_3x3', 2)], [('sep_conv_3x3', 1), ('skip_connect', 0)], [('sep_conv_3x3', 1), ('skip_connect', 0)]],
    normal_concat=range(2, 6),
    reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [('max_pool_3x3', 0), ('skip_connect', 2)], [('skip_connect', 3), ('max_pool_3x3', 0)], [('skip_connect', 2), ('max_pool_3x3', 0)]],
    reduce_concat=range(2, 6)
)"""  # noqa: E501


def test_nni_tutorial_dicts_read_as_the_cells_they_draw():
  assert genotype_formats.genotype_from_nni(NNI_TUTORIAL_SEARCHED) == Genotype(
      normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
              ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0)],
      normal_concat=ALL_NODES,
      reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('dil_conv_5x5', 2), ('sep_conv_3x3', 0),
              ('dil_conv_5x5', 2), ('sep_conv_5x5', 1), ('sep_conv_5x5', 4), ('dil_conv_5x5', 2)],
      reduce_concat=ALL_NODES)
  assert genotype_formats.genotype_from_nni(NNI_TUTORIAL_REPRODUCED) == Genotype(
      normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0),
              ('sep_conv_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],
      normal_concat=ALL_NODES,
      reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 0),
              ('max_pool_3x3', 0), ('sep_conv_3x3', 2), ('max_pool_3x3', 0), ('skip_connect', 2)],
      reduce_concat=ALL_NODES)


@pytest.mark.parametrize('arch', [NNI_TUTORIAL_SEARCHED, NNI_TUTORIAL_REPRODUCED])
def test_nni_dicts_round_trip_exactly_and_parse_as_printed_or_as_json(arch):
  genotype = genotype_formats.genotype_from_nni(arch)
  written = genotype_formats.genotype_to_nni(genotype)
  assert written == arch and list(written) == list(arch)  # NNI's key order too
  assert genotype_formats.parse_genotype(repr(arch)) == genotype  # as NNI prints it (single quotes)
  assert genotype_formats.parse_genotype(json.dumps(arch)) == genotype
  assert genotype_formats.parse_genotype(genotype_formats.format_genotype(genotype, 'nni')) == genotype


def test_nni_single_element_input_lists_are_read():
  arch = {k: [v] if '/input_' in k else v for k, v in NNI_TUTORIAL_SEARCHED.items()}
  assert genotype_formats.genotype_from_nni(arch) == genotype_formats.genotype_from_nni(NNI_TUTORIAL_SEARCHED)


def test_pt_darts_readme_genotype_parses_and_is_written_back():
  genotype = genotype_formats.parse_genotype(PT_DARTS_CIFAR10)
  assert genotype == Genotype(
      normal=[('sep_conv_3x3', 0), ('dil_conv_5x5', 1), ('skip_connect', 0), ('dil_conv_3x3', 2),
              ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('skip_connect', 0)],
      normal_concat=ALL_NODES,
      reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2),
              ('skip_connect', 3), ('max_pool_3x3', 0), ('skip_connect', 2), ('max_pool_3x3', 0)],
      reduce_concat=ALL_NODES)
  # The same text up to white space (pt.darts prints it on one line; the README breaks the lines).
  assert ''.join(genotype_formats.genotype_to_pt_darts(genotype).split()) == ''.join(PT_DARTS_CIFAR10.split())


@pytest.mark.parametrize('name', ['DARTS_V1', 'DARTS_V2', 'NASNet', 'AmoebaNet'])
@pytest.mark.parametrize('fmt', genotype_formats.GENOTYPE_FORMATS)
def test_every_format_round_trips_through_parse_genotype(name, fmt):
  genotype = genotype_formats.parse_genotype(name)
  if fmt == 'nni' and name in ('NASNet', 'AmoebaNet'):  # cells that leave nodes out of the concat: not in NNI's space
    with pytest.raises(ValueError, match=r'_concat=\[4, 5, 6\] leaves out some of 2\.\.6'):
      genotype_formats.format_genotype(genotype, fmt)
    return
  assert genotype_formats.parse_genotype(genotype_formats.format_genotype(genotype, fmt)) == genotype


@pytest.mark.parametrize('arch,message', [
    ({**NNI_TUTORIAL_SEARCHED, 'width': 16}, "unknown key 'width' in the NNI architecture dict"),
    ({k: v for k, v in NNI_TUTORIAL_SEARCHED.items() if k != 'reduce/input_3_1'},
     "the NNI architecture dict has no 'reduce/input_3_1'"),
    ({**NNI_TUTORIAL_SEARCHED, 'normal/op_2_0': 'conv_9x9'}, "unknown op name 'conv_9x9' at normal"),
    ({**NNI_TUTORIAL_SEARCHED, 'normal/input_3_1': 3}, 'input index 3 at normal.3. is out of range'),
])
def test_malformed_nni_dicts_are_rejected_with_the_reason(arch, message):
  with pytest.raises(ValueError, match=message):
    genotype_formats.genotype_from_nni(arch)


def test_pt_darts_node_with_three_inputs_is_rejected():
  with pytest.raises(ValueError, match=r'normal\[0\] \(node 0\) has 3 \(op, input\) pairs'):
    genotype_formats.parse_genotype(
        PT_DARTS_CIFAR10.replace("('dil_conv_5x5', 1)]", "('dil_conv_5x5', 1), ('none', 0)]", 1))


def test_retrain_accepts_nni_and_pt_darts_genotypes(tmp_path):
  (tmp_path / 'arch.json').write_text(json.dumps(NNI_TUTORIAL_REPRODUCED))
  assert (genotype_formats.load_genotype(str(tmp_path / 'arch.json'))
          == genotype_formats.genotype_from_nni(NNI_TUTORIAL_REPRODUCED))
  assert genotype_formats.load_genotype(PT_DARTS_CIFAR10) == genotype_formats.parse_genotype(PT_DARTS_CIFAR10)


def test_convert_cli_prints_the_conversion_and_refuses_bad_input_in_one_line(capsys):
  genotypes_cli.main(['convert', '--to', 'nni', PT_DARTS_CIFAR10])
  assert genotype_formats.parse_genotype(capsys.readouterr().out) == genotype_formats.parse_genotype(PT_DARTS_CIFAR10)
  with pytest.raises(SystemExit) as exit_:
    genotypes_cli.main(['convert', '--to', 'pt_darts', "{'normal/op_2_0': 'sep_conv_3x3'}"])
  # cli.run's exit: status 1 and this one line on stderr.
  assert exit_.value.code == f"{genotypes_cli.PROG}: error: the NNI architecture dict has no 'normal/input_2_0'"
