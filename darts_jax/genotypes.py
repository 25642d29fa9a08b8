"""Genotypes between tools: this project's JSON, the original's ``Genotype(...)`` repr, pt.darts's genotype text and
NNI's architecture dict.

    python -m darts_jax.genotypes convert --to nni|pt_darts|original|json GENOTYPE

prints GENOTYPE (a known name such as ``DARTS_V2``, a ``genotype.json`` file or a search workdir, or the text in any
of the formats) in the chosen format. The library functions are re-exported from `darts_jax.cnn.genotypes`:
`genotype_from_nni` / `genotype_to_nni` (NNI's ``{'normal/op_2_0': 'sep_conv_3x3', 'normal/input_2_0': 1, ...}``),
`genotype_to_pt_darts`, `genotype_to_repr`, `genotype_to_json`, `format_genotype`, and `parse_genotype`, which reads
every format and is what ``--config.genotype`` and ``darts_jax.evaluate --genotype`` go through.

As the original's ``genotypes.py``, it holds the search space (`PRIMITIVES`) and the published cells: `NASNet`,
`AmoebaNet`, `DARTS_V1`, `DARTS_V2` and `DARTS` (= `DARTS_V2`), all in `KNOWN_GENOTYPES`.
"""
from __future__ import annotations

import argparse

from darts_jax.cnn.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPE_FORMATS, KNOWN_GENOTYPES, PRIMITIVES,
                                     AmoebaNet, Genotype, NASNet, format_genotype, genotype_from_json,
                                     genotype_from_nni, genotype_from_repr, genotype_to_json, genotype_to_nni,
                                     genotype_to_pt_darts, genotype_to_repr, parse_genotype, validate_genotype)

__all__ = ['DARTS', 'DARTS_V1', 'DARTS_V2', 'GENOTYPE_FORMATS', 'KNOWN_GENOTYPES', 'PRIMITIVES', 'AmoebaNet',
           'Genotype', 'NASNet', 'format_genotype', 'genotype_from_json', 'genotype_from_nni', 'genotype_from_repr',
           'genotype_to_json', 'genotype_to_nni', 'genotype_to_pt_darts', 'genotype_to_repr', 'parse_genotype',
           'validate_genotype']

PROG = 'darts_jax.genotypes'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=f'python -m {PROG}', description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', help='print a genotype in another format')
  convert.add_argument('--to', choices=GENOTYPE_FORMATS, required=True, help='the output format')
  convert.add_argument('genotype', help='a known name (DARTS_V2, ...), a genotype.json file or search workdir, or '
                                        'the genotype as JSON, Genotype(...) text (original or pt.darts) or NNI dict')
  args = parser.parse_args(argv)
  # The command line's imports (orbax, absl flags) stay out of the library's `import darts_jax.genotypes`.
  from darts_jax.tasks.retrain import load_genotype  # pylint: disable=import-outside-toplevel
  from darts_jax.training import cli  # pylint: disable=import-outside-toplevel
  print(cli.run(PROG, lambda: format_genotype(load_genotype(args.genotype), args.to)))


if __name__ == '__main__':
  main()
