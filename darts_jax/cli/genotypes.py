"""Genotypes between tools: this project's JSON, the original's ``Genotype(...)`` repr, pt.darts's genotype text and
NNI's architecture dict.

    python -m darts_jax.cli.genotypes convert --to nni|pt_darts|original|json GENOTYPE

prints GENOTYPE (a known name such as ``DARTS_V2``, a ``genotype.json`` file or a search workdir, or the text in any
of the formats) in the chosen format. The library functions (`genotype_from_nni`, `genotype_to_nni`,
`genotype_to_pt_darts`, `genotype_to_repr`, `format_genotype`, `parse_genotype`) are `darts_jax.cnn.genotype_formats`,
the published cells `darts_jax.cnn.genotypes`.
"""
from __future__ import annotations

import argparse

from darts_jax.cnn.genotype_formats import GENOTYPE_FORMATS, format_genotype, load_genotype
from darts_jax.training import cli

PROG = 'darts-genotypes'


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', help='print a genotype in another format')
  convert.add_argument('--to', choices=GENOTYPE_FORMATS, required=True, help='the output format')
  convert.add_argument('genotype', help='a known name (DARTS_V2, ...), a genotype.json file or search workdir, or '
                                        'the genotype as JSON, Genotype(...) text (original or pt.darts) or NNI dict')
  args = parser.parse_args(argv)
  print(cli.run(PROG, lambda: format_genotype(load_genotype(args.genotype), args.to)))


if __name__ == '__main__':
  main()
