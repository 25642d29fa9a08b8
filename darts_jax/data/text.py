"""Word-level language-modelling data: Penn Treebank, WikiText-2 and an offline stand-in, batched as the original.

Corpora are three text files (train, validation, test) of one sentence per line, already tokenised and with rare
words replaced by ``<unk>`` (Mikolov's PTB: ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``; WikiText-2:
``wiki.train.tokens``, ...; or the original DARTS layout ``train.txt``, ``valid.txt``, ``test.txt``). As the
original ``rnn/data.py``, each line becomes its words plus ``<eos>``; the vocabulary is the training file's words
in order of first appearance (words of the other splits outside it read as ``<unk>``).

``kjv`` is the offline default of the quick configs: the King James Bible of Debian's ``bible-kjv`` package
(``apt-get install bible-kjv``), one verse per line, tokenised as PTB was (`prepare_kjv`): lower case, punctuation
removed, numbers as ``N``, ``'s`` split off, the 9,998 most frequent training words kept and the rest ``<unk>``
(10,000 words with ``<unk>`` and ``<eos>``, PTB's vocabulary). It is real English of about PTB's size (31,102 verses, ~820,000
words against PTB's ~930,000 training words), so the models, batches and step times are PTB's; its perplexities are
its own (archaic, repetitive prose is easier to predict than news text).

Batching (the original ``utils.batchify``/``get_batch``): a split is cut into ``batch_size`` contiguous streams,
one per batch row; a batch is the next ``seq_len`` tokens of every stream, the targets the tokens one later, and the
hidden state carries over from batch to batch. `bptt_lengths` draws an epoch's sequence lengths from ``(seed,
epoch)``, so an epoch's batches are a pure function of its index and a resumed run sees the same ones.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from darts_jax.data.sources import DATA_DIR_ENV, DatasetNotFoundError

EOS, UNK = '<eos>', '<unk>'
SPLITS = ('train', 'valid', 'test')
FILE_NAMES = {
    'ptb': ('ptb.{split}.txt', '{split}.txt'),
    'wikitext2': ('wiki.{split}.tokens', '{split}.txt'),
    'kjv': ('ptb.{split}.txt',),
}
"""The corpora and the file names looked for in a data directory, in order."""
TEXT_DATASETS = tuple(FILE_NAMES)
KJV_VOCAB_SIZE = 10_000
BIBLE_PROGRAM = 'bible'
_WORD = re.compile(r"[a-z0-9']+")


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
  """A tokenised corpus: ``vocab`` (id -> word) and int32 token ids of the three splits, ``<eos>`` after each
  line."""
  name: str
  vocab: list[str]
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


def _find_files(name: str, directory: Path) -> dict[str, Path] | None:
  for pattern in FILE_NAMES[name]:
    paths = {split: directory / pattern.format(split=split) for split in SPLITS}
    if all(p.is_file() for p in paths.values()):
      return paths
  return None


def default_dir(name: str) -> Path:
  """``$DARTS_JAX_DATA/<name>`` if set, else ``~/.cache/darts_jax/<name>``."""
  root = os.environ.get(DATA_DIR_ENV)
  return Path(root, name) if root else Path('~/.cache/darts_jax', name).expanduser()


def load_text_corpus(name: str, data_dir: str | os.PathLike[str] | None = None) -> TextCorpus:
  """Reads corpus `name` (one of `TEXT_DATASETS`) from `data_dir` (default `default_dir`).

  ``kjv`` is written there by `prepare_kjv` the first time.

  Raises:
    ValueError: for an unknown name.
    DatasetNotFoundError: the files are not there; the message names them and where they go.
  """
  if name not in FILE_NAMES:
    raise ValueError(f'Unknown text dataset {name!r}; expected one of {", ".join(TEXT_DATASETS)}.')
  directory = Path(data_dir).expanduser() if data_dir else default_dir(name)
  paths = _find_files(name, directory)
  if paths is None and name == 'kjv':
    prepare_kjv(directory)
    paths = _find_files(name, directory)
  if paths is None:
    names = ', '.join(FILE_NAMES[name][0].format(split=s) for s in SPLITS)
    raise DatasetNotFoundError(f'{name} not found: put {names} in {directory} (or pass --config.data.dir=DIR).')
  lines = {split: path.read_text(encoding='utf-8').splitlines() for split, path in paths.items()}
  index: dict[str, int] = {}
  for line in lines['train']:
    for word in line.split() + [EOS]:
      index.setdefault(word, len(index))
  splits = {split: _ids(text, index, paths[split]) for split, text in lines.items()}
  return TextCorpus(name=name, vocab=list(index), **splits)


def _ids(lines: list[str], index: dict[str, int], path: Path) -> np.ndarray:
  unk = index.get(UNK)
  ids = []
  for number, line in enumerate(lines, 1):
    for word in line.split() + [EOS]:
      i = index.get(word, unk)
      if i is None:
        raise ValueError(f'{path}:{number}: {word!r} is not in the training vocabulary, which has no {UNK}; '
                         'the splits must share one vocabulary.')
      ids.append(i)
  return np.asarray(ids, np.int32)


def tokenize_like_ptb(text: str) -> list[str]:
  """Lower case, punctuation dropped, numbers as ``N`` and ``'s`` split off, as in Mikolov's PTB."""
  words = []
  for token in _WORD.findall(text.lower()):
    token = token.strip("'")
    if not token:
      continue
    if token.endswith("'s") and len(token) > 2:
      words += [token[:-2], "'s"]
    elif any(c.isdigit() for c in token):
      words.append('N')
    else:
      words.append(token)
  return words


def prepare_kjv(directory: str | os.PathLike[str]) -> None:
  """Writes the King James Bible (``bible-kjv``) as a PTB-style corpus, ``ptb.{train,valid,test}.txt``, to
  `directory`: one verse per line, tokenised by `tokenize_like_ptb`, words outside the training split's 9,998 most
  frequent (ties alphabetical) as ``<unk>``. Blocks of 100 consecutive verses go to the validation split when their
  index is 18 mod 20, to the test split at 19 mod 20, else to training (~90/5/5%).

  Raises:
    DatasetNotFoundError: the ``bible`` program is not installed.
  """
  program = shutil.which(BIBLE_PROGRAM)
  if program is None:
    raise DatasetNotFoundError(f'kjv needs the King James Bible of Debian\'s bible-kjv package, whose "{BIBLE_PROGRAM}" '
                               'program is not installed: apt-get install bible-kjv (or pass --config.data.name=ptb '
                               'with --config.data.dir=DIR holding ptb.train.txt, ptb.valid.txt, ptb.test.txt).')
  text = subprocess.run([program, '-f', 'gen1:1-rev22:21'], capture_output=True, text=True, check=True).stdout
  verses = []
  for line in text.splitlines():
    reference, _, verse = line.partition(' ')  # "Ge1:1 In the beginning ..."
    if verse and ':' in reference:
      verses.append(tokenize_like_ptb(verse))
  split_of = lambda i: {18: 'valid', 19: 'test'}.get((i // 100) % 20, 'train')
  splits = collections.defaultdict(list)
  for i, words in enumerate(verses):
    splits[split_of(i)].append(words)
  counts = collections.Counter(w for words in splits['train'] for w in words)
  kept = {w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:KJV_VOCAB_SIZE - 2]}
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for split in SPLITS:
    lines = (' '.join(w if w in kept else UNK for w in words) for words in splits[split])
    tmp = directory / f'.ptb.{split}.txt.tmp'
    tmp.write_text(''.join(f' {line} \n' for line in lines), encoding='utf-8')  # PTB's spacing
    tmp.replace(directory / f'ptb.{split}.txt')


# ---------------------------------------------------------------------------------------------------------------------
# Batching.


def batchify(tokens: np.ndarray, batch_size: int) -> np.ndarray:
  """``(batch_size, n)``: the corpus cut into `batch_size` contiguous streams of ``n = len // batch_size`` tokens
  (the remainder dropped), row ``b`` the ``b``-th stretch of text.

  Raises:
    ValueError: when the corpus has fewer than 2 tokens per stream.
  """
  n = len(tokens) // batch_size
  if n < 2:
    raise ValueError(f'batch_size {batch_size} leaves fewer than 2 tokens per stream of the {len(tokens)}-token '
                     'split; lower the batch size.')
  return np.ascontiguousarray(tokens[:n * batch_size].reshape(batch_size, n))


def bptt_lengths(stream_length: int, bptt: int, *, seed: int, epoch: int, jitter: float = 5.0,
                 max_delta: int = 20, half_probability: float = 0.05, min_length: int = 5) -> list[int]:
  """An epoch's sequence lengths, as the original's training loop draws them, from ``(seed, epoch)`` only.

  With probability `half_probability` the base length is ``bptt / 2``, else `bptt`; with ``jitter > 0`` the
  length is ``max(min_length, int(N(base, jitter)))`` capped at ``bptt + max_delta`` (``train.py``), with
  ``jitter = 0`` it is ``int(base)`` (``train_search.py``). Lengths are drawn until they cover the
  ``stream_length - 1`` predictable positions; the last batch is cut at the end of the stream (its length is what
  remains).
  """
  rng = np.random.default_rng([seed, epoch, 0x7e47])
  lengths, position = [], 0
  while position < stream_length - 2:
    base = bptt if rng.random() >= half_probability else bptt / 2
    length = int(base) if not jitter else min(max(min_length, int(rng.normal(base, jitter))), bptt + max_delta)
    lengths.append(min(length, stream_length - 1 - position))
    position += length
  return lengths


def max_bptt_length(bptt: int, jitter: float, max_delta: int) -> int:
  """The longest length `bptt_lengths` draws: the time axis that every batch is padded to (one program)."""
  return bptt + max_delta if jitter else bptt


def lm_batches(streams: np.ndarray, lengths: list[int], *, max_length: int, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, read_length: int | None = None
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """This process's rows of the epoch's batches from `start_step` on: ``(tokens, targets, length, first)``.

  Batch ``k`` starts at position ``sum(lengths[:k])`` of the streams and reads ``lengths[k]`` tokens, or
  `read_length` where given, cut at the end of the streams; a start past the end wraps around (the search's
  validation batches: the original reads them at the training position modulo the shorter validation streams,
  always ``bptt`` long). ``tokens`` and ``targets`` are int32 ``(rows, max_length)``, zero past the batch's
  length; ``length`` (the real time steps) and ``first`` (1 in the epoch's first batch: the hidden state starts
  from zeros) are int32 ``(rows,)`` with one value repeated, so that every array splits over devices along the
  rows.
  """
  rows = len(streams) // process_count
  streams = streams[process_index * rows:(process_index + 1) * rows]
  positions = np.concatenate([[0], np.cumsum(lengths)])
  stream_length = streams.shape[1]
  for step in range(start_step, len(lengths)):
    start = int(positions[step]) % (stream_length - 1)
    length = min(read_length or lengths[step], stream_length - 1 - start, max_length)
    tokens = np.zeros((rows, max_length), np.int32)
    targets = np.zeros((rows, max_length), np.int32)
    tokens[:, :length] = streams[:, start:start + length]
    targets[:, :length] = streams[:, start + 1:start + 1 + length]
    yield tokens, targets, np.full(rows, length, np.int32), np.full(rows, step == 0, np.int32)


def eval_chunks(tokens: np.ndarray, batch_size: int, bptt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A split for evaluation as the original's ``evaluate``: `batch_size` streams read `bptt` tokens at a time.

  Returns ``(inputs, targets, lengths)``: int32 ``(chunks, batch_size, bptt)`` (the last chunk zero-padded) and
  the chunks' real lengths ``(chunks,)``.
  """
  streams = batchify(tokens, batch_size)
  n = streams.shape[1] - 1
  chunks = -(-n // bptt)
  inputs = np.zeros((chunks, batch_size, bptt), np.int32)
  targets = np.zeros_like(inputs)
  lengths = np.zeros(chunks, np.int32)
  for c in range(chunks):
    length = min(bptt, n - c * bptt)
    inputs[c, :, :length] = streams[:, c * bptt:c * bptt + length]
    targets[c, :, :length] = streams[:, c * bptt + 1:c * bptt + 1 + length]
    lengths[c] = length
  return inputs, targets, lengths
