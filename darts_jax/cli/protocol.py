"""The paper's whole protocol: search with several seeds, selection by short retraining, final evaluation.

    python -m darts_jax.cli.protocol --config configs/protocol_quick.py --workdir runs/protocol_quick
    python -m darts_jax.cli.protocol --config configs/protocol_cifar10.py --workdir runs/protocol_cifar10

Running the same command again resumes: finished stages and runs are skipped, an interrupted one resumes from its
checkpoint. See `darts_jax.tasks.protocol` for the stages and the workdir.
"""
from darts_jax.tasks import protocol
from darts_jax.training import cli



def main(prog: str = 'darts-protocol') -> None:
  """The command line (the ``darts-protocol`` console script); `prog` names the command in its messages."""
  cli.main(prog, protocol.protocol, example_config='protocol_quick')


if __name__ == '__main__':
  main('python -m darts_jax.cli.protocol')
