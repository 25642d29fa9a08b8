"""The paper's whole protocol (DARTS, Sec. 3.2): search with several seeds, select by short retraining, evaluate the
winner over repeats.

One DARTS search is not a result: runs with different seeds end in different local minima. `protocol(config,
workdir)` therefore runs, on the task functions of the single-run tools (`tasks.search.search`,
`tasks.retrain.retrain`, no loops of its own):

1. **search** (``workdir/search``): ``config.search`` with ``num_seeds`` = k seeds in one program
   (`tasks.search` with num_seeds = k), giving k genotypes;
2. **selection** (``workdir/selection/seed_<s>``): each genotype trained from scratch with ``config.selection``
   (a short schedule, ``evaluate_on='search_valid'``: on the search split's training half, scored on its validation
   half, never on the test set); the winner has the best validation accuracy (the first on a tie). A genotype equal
   to an earlier seed's is not trained again: the same genotype, config and seed give the same run;
3. **final** (``workdir/final/repeat_<r>``): the winner trained ``config.repeats`` times with ``config.final``
   (seeds ``final.seed + r``) on the full training set and evaluated on the test set;
4. ``summary.json`` and ``summary.md``: each seed's genotype and selection accuracy, the winner, the final mean ±
   std test error (std with ddof=1 over the repeats), parameters, and the wall time of every stage.

Every run is resumable as its own tool's is: running the same command again skips finished stages and runs (a
search with its summary, a retraining with its ``results.json``) and resumes an interrupted one from its latest
checkpoint; a changed configuration is refused before anything runs, except ``repeats``: more repeats train only
the new ones.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from darts_jax.cnn import genotype_formats, genotypes
from darts_jax.tasks import retrain, search
from darts_jax.training import config_utils, loop, reporting

SUMMARY_JSON, SUMMARY_MD = 'summary.json', 'summary.md'
_STAGE_CONFIGS = ('search', 'selection', 'final')


def _resumable_keys() -> frozenset[str]:
  # What may change on resume in a stage's run may change in the protocol's config too; the genotypes are the
  # protocol's to set; more (or fewer) repeats add runs (or summarise the first ones) without changing any.
  return frozenset({'compilation_cache_dir', 'repeats', 'selection.genotype', 'final.genotype'}
                   | {f'{stage}.{key}' for stage in _STAGE_CONFIGS for key in loop.RESUMABLE_KEYS})


def _check_config(config: ml_collections.ConfigDict) -> None:
  if config.search.get('num_seeds', 1) < 1 or config.repeats < 1:
    raise ValueError(f'search.num_seeds ({config.search.get("num_seeds", 1)}) and repeats ({config.repeats}) must be '
                     'positive.')
  if config.selection.get('evaluate_on', 'test') != 'search_valid':
    raise ValueError("selection.evaluate_on must be 'search_valid': selecting on the test set reports a biased "
                     'test error.')
  if config.final.get('evaluate_on', 'test') != 'test':
    raise ValueError("final.evaluate_on must be 'test'.")


def _search_genotype_dirs(search_dir: Path, num_seeds: int) -> list[Path]:
  return [search_dir] if num_seeds == 1 else [search.seed_dir(search_dir, s) for s in range(num_seeds)]


def _search_finished(search_dir: Path, num_seeds: int) -> bool:
  final_file = 'genotype.json' if num_seeds == 1 else search.SUMMARY_FILE
  return (search_dir / final_file).is_file()


def _retrain(config: ml_collections.ConfigDict, genotype: genotypes.Genotype, seed: int,
             workdir: Path) -> dict[str, Any]:
  """A finished retraining's results, or the retraining run (or resumed) now."""
  if (workdir / retrain.RESULTS_FILE).is_file():
    return json.loads((workdir / retrain.RESULTS_FILE).read_text())
  run_config = ml_collections.ConfigDict(config.to_dict())
  run_config.genotype = genotype_formats.genotype_to_json(genotype)
  run_config.seed = seed
  return retrain.retrain(run_config, workdir)


def _search_wall_time(search_dir: Path) -> float:
  """The search's time over all resumes: the sum of its epochs' times."""
  return float(sum(r.get('epoch_time_s', 0.0) for r in reporting.read_jsonl(search_dir / reporting.METRICS_FILE)
                   if 'epoch' in r))


def protocol(config: ml_collections.ConfigDict, workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Runs (or resumes) the protocol of `config` (``configs/protocol_*.py``) in `workdir` (module docstring).

  Returns:
    The summary (the content of ``summary.json``).

  Raises:
    As `tasks.search.search` and `tasks.retrain.retrain`; `loop.ConfigMismatchError` for a workdir of another
    protocol configuration.
  """
  _check_config(config)
  workdir = loop.prepare_workdir(workdir, config, _resumable_keys())
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / loop.CONFIG_FILE).write_text(config_utils.config_to_json(config) + '\n')

  # 1. Search.
  num_seeds = config.search.get('num_seeds', 1)
  search_dir = workdir / 'search'
  if _search_finished(search_dir, num_seeds):
    logging.info('Search: finished in %s.', search_dir)
  else:
    logging.info('Search: %d seed(s) in %s.', num_seeds, search_dir)
    search.search(config.search, search_dir)
  candidates = [genotype_formats.parse_genotype((d / 'genotype.json').read_text())
                for d in _search_genotype_dirs(search_dir, num_seeds)]

  # 2. Selection: a short retraining of every candidate, scored on the search split's validation half.
  selection = []
  for s, genotype in enumerate(candidates):
    same_as = next((i for i in range(s) if candidates[i] == genotype), None)
    if same_as is not None:
      logging.info('Selection: seed_%d found the genotype of seed_%d; its run counts for both.', s, same_as)
      selection.append({**selection[same_as], 'same_as': same_as, 'wall_time_s': 0.0})
      continue
    logging.info('Selection: training seed_%d\'s genotype %s.', s, genotype)
    results = _retrain(config.selection, genotype, config.selection.seed, workdir / 'selection' / f'seed_{s}')
    selection.append({'valid_accuracy': results['valid_accuracy'], 'valid_loss': results['valid_loss'],
                      'params': results['params'], 'wall_time_s': results['wall_time_s']})
  winner = int(np.argmax([r['valid_accuracy'] for r in selection]))  # the first of equals
  logging.info('Selection: seed_%d wins with validation accuracy %.4f.', winner, selection[winner]['valid_accuracy'])

  # 3. Final evaluation: the winner trained `repeats` times, tested on the test set.
  final = []
  for r in range(config.repeats):
    logging.info('Final: repeat %d of %d.', r + 1, config.repeats)
    results = _retrain(config.final, candidates[winner], config.final.seed + r, workdir / 'final' / f'repeat_{r}')
    final.append({'seed': config.final.seed + r, 'test_accuracy': results['test_accuracy'],
                  'test_loss': results['test_loss'], 'params': results['params'],
                  'wall_time_s': results['wall_time_s']})

  errors = 100.0 * (1.0 - np.array([r['test_accuracy'] for r in final]))
  summary = {
      'search_seeds': [config.search.seed + s for s in range(num_seeds)],
      'candidates': [{'seed': config.search.seed + s, 'genotype': json.loads(genotype_formats.genotype_to_json(g)),
                      **selection[s]} for s, g in enumerate(candidates)],
      'winner': winner,
      'winner_genotype': json.loads(genotype_formats.genotype_to_json(candidates[winner])),
      'final': final,
      'test_error_mean': float(errors.mean()),
      'test_error_std': float(errors.std(ddof=1)) if len(errors) > 1 else 0.0,
      'params': final[0]['params'],
      'wall_time_s': {'search': _search_wall_time(search_dir),
                      'selection': float(sum(r['wall_time_s'] for r in selection)),
                      'final': float(sum(r['wall_time_s'] for r in final))},
  }
  if is_main:
    reporting.write_json(workdir / SUMMARY_JSON, summary)
    (workdir / SUMMARY_MD).write_text(summary_markdown(summary))
  logging.info('Test error %.2f ± %.2f %% over %d repeats; summary in %s.', summary['test_error_mean'],
               summary['test_error_std'], len(final), workdir / SUMMARY_MD)
  return summary


def summary_markdown(summary: dict[str, Any]) -> str:
  """``summary.md``: the candidates with their selection accuracy, the winner, the final test error, the times."""
  lines = ['# DARTS protocol', '', '| seed | genotype | selection accuracy (search validation half) | params |',
           '|---|---|---|---|']
  for s, c in enumerate(summary['candidates']):
    genotype = genotype_formats.genotype_from_json(json.dumps(c['genotype']))
    mark = ' **(winner)**' if s == summary['winner'] else ''
    same = f' (= seed {summary["candidates"][c["same_as"]]["seed"]})' if 'same_as' in c else ''
    lines.append(f'| {c["seed"]}{mark} | `{genotype}` | {100 * c["valid_accuracy"]:.2f}%{same} | {c["params"]:,} |')
  final = summary['final']
  lines += ['', f'Final: the winner (seed {summary["candidates"][summary["winner"]]["seed"]}) trained {len(final)} '
            f'times: **test error {summary["test_error_mean"]:.2f} ± {summary["test_error_std"]:.2f} %** (mean ± '
            f'std), {summary["params"]:,} parameters.', '', '| repeat seed | test error |', '|---|---|']
  lines += [f'| {r["seed"]} | {100 * (1 - r["test_accuracy"]):.2f}% |' for r in final]
  times = summary['wall_time_s']
  lines += ['', '| stage | wall time |', '|---|---|']
  lines += [f'| {stage} | {times[stage] / 60:.1f} min |' for stage in ('search', 'selection', 'final')]
  return '\n'.join(lines) + '\n'
