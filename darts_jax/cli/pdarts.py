"""P-DARTS's staged search of the CNN space: one workdir, one stage per subdirectory, resumable across stages.

    darts-pdarts --config configs/search_pdarts.py --workdir runs/pdarts [--config.KEY=VALUE ...]

Writes ``<workdir>/stage_<i>/`` (each a search workdir), ``pdarts.json`` and the final ``genotype.json``
(`darts_jax.tasks.pdarts`); running it again resumes the first unfinished stage.
"""
from darts_jax.tasks import pdarts
from darts_jax.training import cli


def main(prog: str = 'darts-pdarts') -> None:
  """The command line (the ``darts-pdarts`` console script)."""
  cli.main(prog, pdarts.pdarts, example_config='search_pdarts')


if __name__ == '__main__':
  main('python -m darts_jax.cli.pdarts')
