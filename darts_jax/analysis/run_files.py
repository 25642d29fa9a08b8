"""A search workdir's files, read back for plots and comparisons; finished and running runs alike.

A search (`darts_jax.tasks.search`) writes ``config.json``, the epoch records of ``metrics.jsonl``, the alphas after
every epoch in ``alphas.jsonl`` (``{"step", "epoch", "normal": [[...]], "reduce": [[...]]}`` per line), the
genotypes in ``genotypes.jsonl``, and at the end ``alphas.npz``, ``genotype.json`` and, after an early stop,
``early_stop.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.training import curves, loop, reporting

ALPHAS_FILE = 'alphas.jsonl'
EARLY_STOP_FILE = 'early_stop.json'
GENOTYPES_FILE = 'genotypes.jsonl'


def check_search_workdir(workdir: str | os.PathLike[str]) -> Path:
  """`workdir` as a Path, if it holds a search (a ``config.json`` with a ``hypergradient``).

  Raises:
    NotADirectoryError: `workdir` is not a directory.
    ValueError: it holds no search run (the message says what is missing).
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise NotADirectoryError(f'{workdir} is not a directory; pass a search workdir (run_search.py --workdir).')
  config = workdir / loop.CONFIG_FILE
  if not config.is_file() or 'hypergradient' not in json.loads(config.read_text()):
    raise ValueError(f'{workdir} is not a search workdir: it has no {loop.CONFIG_FILE} of run_search.py.')
  return workdir


def read_config(workdir: Path) -> dict[str, Any]:
  return json.loads((workdir / loop.CONFIG_FILE).read_text())


def finished_epoch_records(workdir: str | os.PathLike[str]) -> tuple[Path, list[dict[str, Any]]]:
  """A search workdir (`check_search_workdir`) and its epoch records, which plots need at least one of.

  Raises:
    NotADirectoryError, ValueError: `workdir` is not a search workdir, or it has not finished an epoch.
  """
  workdir = check_search_workdir(workdir)
  records = read_epoch_records(workdir)
  if not records:
    raise ValueError(f'{workdir} has no epoch records yet; has the run finished an epoch?')
  return workdir, records


def read_epoch_records(workdir: Path) -> list[dict[str, Any]]:
  """The epoch records of ``metrics.jsonl``, one per epoch, oldest first ([] before the first epoch ends)."""
  path = workdir / reporting.METRICS_FILE
  return curves.read_epoch_records(path) if path.is_file() else []


def read_alphas_log(workdir: Path) -> list[dict[str, Any]]:
  """``{'step', 'epoch', 'alphas': {'normal', 'reduce'}}`` (float32 arrays) after every epoch, oldest first."""
  path = workdir / ALPHAS_FILE
  if not path.is_file():
    return []
  return [{'step': r['step'], 'epoch': r['epoch'],
           'alphas': {kind: np.asarray(r[kind], np.float32) for kind in ('normal', 'reduce')}}
          for r in reporting.read_jsonl(path)]


def read_early_stop(workdir: Path) -> dict[str, Any] | None:
  path = workdir / EARLY_STOP_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def final_alphas(workdir: Path) -> tuple[dict[str, np.ndarray], str]:
  """The alphas a run ended with (``alphas.npz``: the kept ones after an early stop) or, while it runs, those of its
  latest epoch, with a description (``'final'``, ``'epoch 7 (kept)'``, ``'epoch 3'``).

  Raises:
    ValueError: the run has not finished an epoch.
  """
  if (workdir / 'alphas.npz').is_file():
    with np.load(workdir / 'alphas.npz') as npz:
      alphas = {kind: npz[kind] for kind in ('normal', 'reduce')}
    stop = read_early_stop(workdir)
    return alphas, 'final' if stop is None else f'epoch {stop["kept_epoch"]} (kept after the early stop)'
  log = read_alphas_log(workdir)
  if not log:
    raise ValueError(f'{workdir} has no alphas yet ({ALPHAS_FILE} or alphas.npz); has the run finished an epoch?')
  return log[-1]['alphas'], f'epoch {log[-1]["epoch"]}'


def final_genotype(workdir: Path) -> genotypes.Genotype | None:
  """``genotype.json``, or while the run runs the latest genotype of ``genotypes.jsonl``; None before epoch 1."""
  if (workdir / 'genotype.json').is_file():
    return genotype_formats.genotype_from_json((workdir / 'genotype.json').read_text())
  path = workdir / GENOTYPES_FILE
  records = reporting.read_jsonl(path) if path.is_file() else []
  return genotype_formats.genotype_from_json(json.dumps(records[-1]['genotype'])) if records else None
