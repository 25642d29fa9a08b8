"""DARTS architecture search: ``darts-search`` (`darts_jax.cli.search`) as a script in the repository.

    python run_search.py --config configs/search_quick.py --workdir runs/quick [--config.KEY=VALUE ...]
    python run_search.py --config search_ptb_quick --workdir runs/ptb_quick
"""
from darts_jax.cli import search

if __name__ == '__main__':
  search.main('run_search.py')
