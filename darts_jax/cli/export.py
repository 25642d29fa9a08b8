"""A portable inference artifact of a retrained network (`darts_jax.export` has the library: `export_workdir`, `load`).

    darts-export --workdir runs/retrain_quick [--output DIR]      # or: python -m darts_jax.cli.export

writes ``DIR/model.jax_export`` and ``model.json`` (default ``DIR = WORKDIR/export``) and prints DIR.
"""
from absl import app, flags

from darts_jax.export import export_workdir
from darts_jax.training import cli

PROG = 'darts-export'


def _export(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli.start()
  print(cli.run(PROG, lambda: export_workdir(flags.FLAGS.workdir, flags.FLAGS.output)))


def main() -> None:
  """The command line (the ``darts-export`` console script)."""
  # Defined here, not at import: importing the module must not claim flags.
  flags.DEFINE_string('workdir', None, 'Retrain run directory (written by run_retrain.py).')
  flags.DEFINE_string('output', None, 'Output directory (default: WORKDIR/export).')
  flags.mark_flags_as_required(['workdir'])
  app.run(_export)


if __name__ == '__main__':
  main()
