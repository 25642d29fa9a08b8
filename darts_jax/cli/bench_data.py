"""Times the host input pipelines: ``python -m darts_jax.cli.bench_data``.

``--pipeline imagenet_train`` (default) and ``imagenet_eval`` run `data.imagenet`'s grain pipeline (JPEG decoding and
the original's augmentation, or resize 256 + centre crop 224) over an ImageFolder tree: ``--dir`` if given, else
``--images`` JPEGs of ImageNet's typical size (width 400–500, height 333–375, quality 90, ~95 KB: `write_jpegs`)
written to a temporary directory. ``cifar`` compares the two ways of batching CIFAR-sized uint8
arrays held in memory: today's `data.epoch_batches` (a permutation and one ``np.take`` per batch) and a grain
``MapDataset`` (shuffle, per-example access, batch) as the ImageNet pipeline builds it.

Run it pinned to cores to get a per-core figure::

  taskset -c 0 python -m darts_jax.cli.bench_data --workers 0 --threads 0
  taskset -c 0 python -m darts_jax.cli.bench_data --workers 1 --threads 0

``images_per_s`` (wall clock) and ``images_per_cpu_s`` (this process's CPU time; with workers, the share left on
the training process) are measured over ``--batches`` batches after ``--warmup`` untimed ones (worker start-up
excluded); the last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import grain
import numpy as np
from PIL import Image

from darts_jax.data import batching, imagenet


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--pipeline', choices=('imagenet_train', 'imagenet_eval', 'cifar'), default='imagenet_train')
  parser.add_argument('--dir', help='an ImageFolder directory (default: generated JPEGs)')
  parser.add_argument('--images', type=int, default=512, help='JPEGs to generate')
  parser.add_argument('--classes', type=int, default=8, help='class directories to generate')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=12, help='timed batches')
  parser.add_argument('--warmup', type=int, default=2, help='untimed batches first')
  parser.add_argument('--workers', type=int, default=0, help='grain worker processes')
  parser.add_argument('--threads', type=int, default=0, help='decoding threads per process')
  parser.add_argument('--seed', type=int, default=0)
  return parser.parse_args(argv)


def write_jpegs(root: Path, count: int, classes: int, seed: int = 0) -> float:
  """`count` JPEGs of ImageNet's typical size in `classes` class directories of `root`; returns their mean size in
  bytes. Content: a random 16x12 colour field upsampled (bicubic) plus Gaussian noise (sigma 20): ~95 KB a file,
  near ImageNet's training JPEGs (138 GB / 1.28M = ~108 KB), so entropy decoding costs about as much."""
  rng = np.random.default_rng(seed)
  sizes = []
  for i in range(count):
    directory = root / f'n{i % classes:08d}'
    directory.mkdir(parents=True, exist_ok=True)
    w, h = int(rng.integers(400, 501)), int(rng.integers(333, 376))
    field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(field, np.float32) + rng.normal(0, 20, (h, w, 3))
    path = directory / f'{i:06d}.JPEG'
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    sizes.append(path.stat().st_size)
  return float(np.mean(sizes))


def _time(batches, warmup: int, count: int, batch_size: int) -> dict[str, float]:
  """``images_per_s`` (wall clock) and ``images_per_cpu_s`` (this process's CPU time: with workers, what is left
  on the training process) over `count` batches after `warmup`."""
  for _ in range(warmup):
    next(batches)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(count):
    next(batches)
  images = count * batch_size
  return {'images_per_s': images / (time.perf_counter() - start),
          'images_per_cpu_s': images / max(time.process_time() - cpu_start, 1e-9)}


def run(args: argparse.Namespace) -> dict:
  steps = args.warmup + args.batches
  result = {'pipeline': args.pipeline, 'batch': args.batch, 'batches': args.batches, 'workers': args.workers,
            'threads': args.threads}
  if args.pipeline == 'cifar':
    images = np.random.default_rng(0).integers(0, 256, (50_000, 32, 32, 3), np.uint8)
    labels = np.zeros(50_000, np.int32)
    today = batching.epoch_batches(images, labels, batch_size=args.batch, seed=args.seed, epoch=0, max_steps=steps)
    result['epoch_batches'] = _time(today, args.warmup, args.batches, args.batch)
    examples = grain.MapDataset.source(range(len(images))).seed(args.seed).shuffle().map(
        lambda i: (images[i], labels[i])).batch(args.batch, drop_remainder=True)
    with_grain = iter(examples.to_iter_dataset(grain.ReadOptions(num_threads=args.threads)))
    result['grain'] = _time(with_grain, args.warmup, args.batches, args.batch)
    return result
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(args.dir) if args.dir else Path(tmp)
    if not args.dir:
      result['mean_jpeg_bytes'] = write_jpegs(root, args.images, args.classes, args.seed)
    source = imagenet.ImageFolderSource(root)
    if args.pipeline == 'imagenet_train':
      pipeline = imagenet.TrainBatches(source, batch_size=args.batch, steps_per_epoch=len(source) // args.batch,
                                       num_epochs=1, seed=args.seed, workers=args.workers, threads=args.threads)
      with pipeline:
        result.update(_time(pipeline(0, 0), args.warmup, args.batches, args.batch))
    else:
      batches = imagenet.eval_batches(source, args.batch, workers=args.workers, threads=args.threads)
      result.update(_time(batches, args.warmup, args.batches, args.batch))
      batches.close()
  return result


def main(argv: list[str] | None = None) -> None:
  args = _parse_args(argv)
  if args.pipeline != 'cifar' and (args.warmup + args.batches) * args.batch > (args.images if not args.dir else 1 << 62):
    raise SystemExit(f'--images {args.images} is fewer than (--warmup + --batches) * --batch; raise it.')
  print(json.dumps(run(args)))


if __name__ == '__main__':
  main()
