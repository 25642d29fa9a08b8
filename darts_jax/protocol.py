"""The paper's whole protocol: search with several seeds, selection by short retraining, final evaluation.

    python -m darts_jax.protocol --config configs/protocol_quick.py --workdir runs/protocol_quick
    python -m darts_jax.protocol --config configs/protocol_cifar10.py --workdir runs/protocol_cifar10

Running the same command again resumes: finished stages and runs are skipped, an interrupted one resumes from its
checkpoint. See `darts_jax.tasks.protocol` for the stages and the workdir.
"""
from darts_jax.tasks import protocol
from darts_jax.training import cli

if __name__ == '__main__':
  cli.main('python -m darts_jax.protocol', protocol.protocol, example_config='configs/protocol_quick.py')
