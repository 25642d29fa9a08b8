"""The training infrastructure every task shares: the one loop (`loop`: `Task`, `train`, `prepare_workdir`),
checkpoints (`checkpointing`, orbax), metrics and progress (`reporting`), loss curves (`curves`, matplotlib),
data parallelism (`parallel`), the weight optimizer and its schedules (`optimizers`), configs (`config_utils`) and
CLI start-up with one-line errors (`cli`).

The package's import loads none of them: orbax, matplotlib and ml_collections come with the modules that need them.
"""
__all__ = ['checkpointing', 'cli', 'config_utils', 'curves', 'loop', 'optimizers', 'parallel', 'reporting']
