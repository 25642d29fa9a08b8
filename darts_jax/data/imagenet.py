"""ImageNet as the original's ``train_imagenet.py`` reads it, on grain: JPEG decoding and augmentation on the host.

Sources (`open_split`): a directory in torchvision's ``ImageFolder`` layout (``ROOT/train/<wnid>/*.JPEG``,
``ROOT/val/<wnid>/*.JPEG``; sorted class names give labels 0, 1, ...) or tensorflow-datasets' prepared
``imagenet2012`` (``ROOT/imagenet2012/``, read through ``tfds`` data sources, without TensorFlow).

Transforms, per image, with PIL (as torchvision's on PIL images in the original), output uint8 (H, W, 3):

* training (`TrainTransform`): ``RandomResizedCrop(224)`` (area 0.08–1 of the image, aspect ratio 3/4–4/3),
  ``RandomHorizontalFlip``, ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)`` (the four in a
  random order);
* evaluation (`center_crop`): ``Resize(256)`` (shorter side), ``CenterCrop(224)``.

Normalisation with `MEAN` and `STD` (``transforms.Normalize``) runs on the device (`data.make_preprocess`), so the
host sends uint8 batches.

Pipelines (`TrainBatches`, `eval_batches`) are grain ``MapDataset`` s: random access, so the batch at any position
is a pure function of (seed, position). The order is ``MapDataset.shuffle`` repeated with a new permutation every
epoch, the augmentation ``MapDataset.random_map`` (each example's generator seeded by the seed and its position in
the run), so the data of a run depend only on the seed, never on the number of processes, worker processes or
threads. Epochs drop their incomplete last batch (every step the same shapes, as `batching.epoch_batches`); every
process reads its contiguous slice of each global batch. A run's data position is thus (epoch, step), which
`training.loop` checkpoints with the model: resuming builds the pipeline at that position (grain's slice of the
dataset, the random-access counterpart of its iterator ``set_state``) and continues bit for bit. Decoding runs in
``threads`` threads of each of ``workers`` processes (``mp_prefetch``; 0 workers: in this process).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import grain
import numpy as np
from absl import flags
from PIL import Image, ImageEnhance

from darts_jax.data.sources import DATA_DIR_ENV, DatasetNotFoundError

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE, CROP = 256, 224
SCALE = (0.08, 1.0)  # RandomResizedCrop's range of the crop's area, as a fraction of the image's
RATIO = (3 / 4, 4 / 3)  # and of its aspect ratio (width / height)
JITTER = (0.4, 0.4, 0.4, 0.2)  # ColorJitter(brightness, contrast, saturation, hue)
_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
_HOW = ('ImageNet is read from an ImageFolder tree (DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG, the val '
        'images sorted into class directories) or from tensorflow-datasets\' prepared imagenet2012 (DIR/imagenet2012)')

Batch = tuple[np.ndarray, np.ndarray]  # uint8 images (n, H, W, 3), int32 labels (n,)
EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # and a float32 mask: 1 for real examples, 0 for padding


# ---------------------------------------------------------------------------------------------------------------------
# Transforms.


def center_crop(image: Image.Image, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
  """`image` as (crop, crop, 3) uint8: shorter side resized to `resize` (bilinear), the centre `crop` × `crop`."""
  image = image.convert('RGB')
  w, h = image.size
  size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  image = image.resize(size, Image.BILINEAR)
  left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
  return np.asarray(image.crop((left, top, left + crop, top + crop)), np.uint8)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float] = SCALE,
                            ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
  """torchvision's ``RandomResizedCrop.get_params``: ``(left, top, width, height)`` of a crop whose area is a
  uniform fraction in `scale` of the image's and whose aspect ratio is log-uniform in `ratio`; after 10 rejected
  draws, the largest centred crop within `ratio`."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      return int(rng.integers(0, width - w + 1)), top, w, h
  if width / height < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif width / height > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def adjust_hue(image: Image.Image, hue: float) -> Image.Image:
  """torchvision's ``adjust_hue`` on PIL: the H channel of HSV shifted by ``hue`` turns (mod 1, in 1/255 steps)."""
  h, s, v = image.convert('HSV').split()
  shifted = np.asarray(h, np.uint8) + np.uint8(int(hue * 255) % 256)  # uint8 arithmetic wraps around
  return Image.merge('HSV', (Image.fromarray(shifted, 'L'), s, v)).convert('RGB')


def color_jitter(image: Image.Image, rng: np.random.Generator, brightness: float = JITTER[0],
                 contrast: float = JITTER[1], saturation: float = JITTER[2], hue: float = JITTER[3]) -> Image.Image:
  """torchvision's ``ColorJitter``: brightness, contrast and saturation factors uniform in ``[1 - x, 1 + x]``, a hue
  shift uniform in ``[-hue, hue]``, applied in a random order (PIL's ``ImageEnhance``, as torchvision on PIL)."""
  factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (brightness, contrast, saturation)]
  shift = rng.uniform(-hue, hue)
  adjust = (lambda im: ImageEnhance.Brightness(im).enhance(factors[0]),
            lambda im: ImageEnhance.Contrast(im).enhance(factors[1]),
            lambda im: ImageEnhance.Color(im).enhance(factors[2]),
            lambda im: adjust_hue(im, shift))
  for i in rng.permutation(4):
    image = adjust[i](image)
  return image


def train_crop(image: Image.Image, rng: np.random.Generator, size: int = CROP) -> np.ndarray:
  """The original's training augmentation of one image: random-resized crop to `size` × `size` (bilinear), flip
  with probability 1/2, colour jitter; uint8 (size, size, 3)."""
  image = image.convert('RGB')
  left, top, w, h = random_resized_crop_box(*image.size, rng)
  # Crop, then resize (torchvision's resized_crop): PIL's resize with a box would filter across the crop's edges.
  image = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(color_jitter(image, rng), np.uint8)


class TrainTransform(grain.transforms.RandomMap):
  """``(image, label) -> (uint8 crop, label)``: `train_crop` if `augment`, else `center_crop` (picklable: it runs
  in grain's worker processes)."""

  def __init__(self, image_size: int, resize: int, augment: bool):
    self.image_size, self.resize, self.augment = image_size, resize, augment

  def random_map(self, element: tuple[Image.Image, int], rng: np.random.Generator) -> tuple[np.ndarray, int]:
    image, label = element
    if self.augment:
      return train_crop(image, rng, self.image_size), label
    return center_crop(image, self.resize, self.image_size), label


class EvalTransform(grain.transforms.Map):
  """``(image, label) -> (uint8 centre crop, label)`` (`center_crop`)."""

  def __init__(self, image_size: int, resize: int):
    self.image_size, self.resize = image_size, resize

  def map(self, element: tuple[Image.Image, int]) -> tuple[np.ndarray, int]:
    image, label = element
    return center_crop(image, self.resize, self.image_size), label


# ---------------------------------------------------------------------------------------------------------------------
# Sources.


def image_folder(directory: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, list[str]]:
  """``(paths, labels, class_names)`` of an ImageFolder directory (classes = sorted sub-directories; paths relative
  to `directory`, sorted within each class; strings, not `Path` s: ImageNet has 1.28M).

  Raises:
    DatasetNotFoundError: no such directory. ValueError: no class sub-directories, or one without images.
  """
  root = Path(directory).expanduser()
  if not root.is_dir():
    raise DatasetNotFoundError(f'{root} is not a directory of ImageNet images (expected one sub-directory per class, '
                               'as torchvision ImageFolder reads them).')
  classes = sorted(d.name for d in root.iterdir() if d.is_dir())
  if not classes:
    raise ValueError(f'{root} has no class sub-directories (ImageFolder layout: {root}/CLASS/IMAGE.JPEG).')
  paths, labels, empty = [], [], []
  for label, name in enumerate(classes):
    files = sorted(os.path.join(os.path.relpath(d, root), f) for d, _, names in os.walk(root / name)
                   for f in names if f.lower().endswith(_EXTENSIONS))
    if not files:
      empty.append(name)
    paths += files
    labels += [label] * len(files)
  if empty:
    shown = ', '.join(empty[:5]) + (f' (and {len(empty) - 5} more)' if len(empty) > 5 else '')
    raise ValueError(f'{root}: class directories without images: {shown} (expected images with one of the '
                     f'extensions {", ".join(_EXTENSIONS)}).')
  return paths, np.asarray(labels, np.int32), classes


class ImageFolderSource(Sequence):
  """An ImageFolder directory as a random-access source of ``(PIL image, label)`` (a grain data source).

  The relative paths are kept as one bytes array: pickling the source to grain's workers stays cheap for 1.28M
  files."""

  def __init__(self, directory: str | os.PathLike[str]):
    paths, self.labels, self.class_names = image_folder(directory)
    self.root = Path(directory).expanduser()
    self._relative = np.array([p.encode() for p in paths])

  def __len__(self) -> int:
    return len(self._relative)

  def __getitem__(self, index: int) -> tuple[Image.Image, int]:
    path = self.root / self._relative[index].decode()
    try:
      image = Image.open(path)
      image.load()
    except OSError as e:
      raise ValueError(f'{path} is not a readable image ({e}).') from None
    return image, int(self.labels[index])

  def __repr__(self) -> str:  # grain prints sources in its errors and statistics
    return f'ImageFolderSource({self.root}, {len(self)} images, {len(self.class_names)} classes)'


class TfdsSource(Sequence):
  """tensorflow-datasets' prepared ``imagenet2012`` (array_record) split as a source of ``(PIL image, label)``."""

  def __init__(self, data_dir: str | os.PathLike[str], split: str):
    import tensorflow_datasets as tfds  # slow to import: only this source needs it
    builder = tfds.builder('imagenet2012', data_dir=str(data_dir))
    self._source = builder.as_data_source(split=split)
    label = builder.info.features['label']
    self.class_names = list(label.names) if label.names else [str(i) for i in range(label.num_classes)]
    self.root, self._split = Path(data_dir), split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> tuple[Image.Image, int]:
    record = self._source[index]
    return Image.fromarray(record['image']), int(record['label'])

  def __repr__(self) -> str:
    return f'TfdsSource({self.root}/imagenet2012, {self._split})'


def data_root(data_dir: str | None) -> Path:
  """The ImageNet directory: `data_dir`, else ``$DARTS_JAX_DATA/imagenet``.

  Raises:
    DatasetNotFoundError: none given, or it does not exist (the message says what it should hold).
  """
  if data_dir:
    root = Path(data_dir).expanduser()
  elif os.environ.get(DATA_DIR_ENV):
    root = Path(os.environ[DATA_DIR_ENV]).expanduser() / 'imagenet'
  else:
    raise DatasetNotFoundError(f'no ImageNet directory given: pass --config.data.dir=DIR or set ${DATA_DIR_ENV} (DIR '
                               f'or ${DATA_DIR_ENV}/imagenet). {_HOW}.')
  if not root.is_dir():
    raise DatasetNotFoundError(f'ImageNet directory {root} does not exist. {_HOW}.')
  return root


def validation_source(directory: str | os.PathLike[str]) -> ImageFolderSource | TfdsSource:
  """Validation images in `directory`: tfds' prepared ``imagenet2012`` if it holds one (its ``validation`` split),
  else an ImageFolder directory such as ``val/`` (`evaluate --pretrained`)."""
  root = Path(directory).expanduser()
  return TfdsSource(root, 'validation') if (root / 'imagenet2012').is_dir() else ImageFolderSource(root)


def open_split(root: str | os.PathLike[str], split: str) -> ImageFolderSource | TfdsSource:
  """The ``'train'`` or ``'val'`` split of the ImageNet directory `root` (see the module docstring).

  Raises:
    DatasetNotFoundError: `root` holds neither ``imagenet2012/`` nor ``split/``. ValueError: a malformed tree.
  """
  root = Path(root).expanduser()
  if (root / 'imagenet2012').is_dir():
    return TfdsSource(root, 'train' if split == 'train' else 'validation')
  if not (root / split).is_dir():
    raise DatasetNotFoundError(f'{root} has no {split}/ directory. {_HOW}.')
  return ImageFolderSource(root / split)


# ---------------------------------------------------------------------------------------------------------------------
# Pipelines.


class _ProcessBatches(grain.MapDataset):
  """Element ``i``: this process's slice of global batch ``i`` of `parent`.

  `parent` is read as epochs of `epoch_size` examples, of which the first ``batches_per_epoch · batch_size`` form
  the epoch's global batches; process ``p`` of ``P`` takes examples ``[p L, (p + 1) L)`` of each (``L = batch_size /
  P``). With `pad`, positions past `epoch_size` repeat its last example and the element gets a mask (0 there).
  """

  def __init__(self, parent: grain.MapDataset, *, epoch_size: int, batches_per_epoch: int, num_epochs: int,
               batch_size: int, process_index: int, process_count: int, pad: bool = False):
    super().__init__(parent)
    if batch_size % process_count:
      raise ValueError(f'batch_size {batch_size} is not divisible by the {process_count} processes.')
    self._epoch_size, self._batches, self._epochs = epoch_size, batches_per_epoch, num_epochs
    self._batch_size, self._local = batch_size, batch_size // process_count
    self._offset, self._pad = process_index * self._local, pad

  def __len__(self) -> int:
    return self._epochs * self._batches

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, batch = divmod(index, self._batches)
    positions = batch * self._batch_size + self._offset + np.arange(self._local)
    clamped = np.minimum(positions, self._epoch_size - 1)
    examples = [self._parent[epoch * self._epoch_size + int(p)] for p in clamped]
    images = np.stack([image for image, _ in examples])
    labels = np.asarray([label for _, label in examples], np.int32)
    if not self._pad:
      return images, labels
    return images, labels, (positions < self._epoch_size).astype(np.float32)

  def __str__(self) -> str:
    return f'ProcessBatches(local_batch_size={self._local}, offset={self._offset})'


def _iterate(dataset: grain.MapDataset, workers: int, threads: int) -> grain.DatasetIterator:
  """An iterator over `dataset` in order: elements prepared by `threads` threads (0: in the caller) in each of
  `workers` processes (0: this one)."""
  iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 1)))
  if workers:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 reads one of its absl flags when it starts workers, failing where flags were never parsed
      # (a library call, a notebook, pytest): google/grain#1355. Their defaults are what we want.
      flags.FLAGS.mark_as_parsed()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
  return iter(iter_ds)


def num_train_batches(num_examples: int, batch_size: int, max_steps: int = 0) -> int:
  """Batches per epoch: ``num_examples // batch_size``, capped by `max_steps` if > 0."""
  if num_examples < batch_size:
    raise ValueError(f'batch_size {batch_size} exceeds the {num_examples} training images; lower the batch size.')
  count = num_examples // batch_size
  return min(count, max_steps) if max_steps > 0 else count


class TrainBatches:
  """The training batches of a run, ``batches(epoch, start)`` as `training.loop.Task` takes them.

  ``TrainBatches(...)(epoch, start)`` yields this process's part of global batches ``start, ..., steps_per_epoch -
  1`` of `epoch` as uint8 images (batch_size / process_count, image_size, image_size, 3) and int32 labels. When
  the next epoch is asked for where the last one ended, the same grain iterator continues (its worker processes
  start once per run); any other position starts a new one there. Close it (or use it as a context manager) to
  stop the workers.
  """

  def __init__(self, source: Sequence, *, batch_size: int, steps_per_epoch: int, num_epochs: int, seed: int,
               image_size: int = CROP, resize: int = RESIZE, augment: bool = True, process_index: int = 0,
               process_count: int = 1, workers: int = 0, threads: int = 8):
    if steps_per_epoch * batch_size > len(source):
      raise ValueError(f'{steps_per_epoch} steps of {batch_size} exceed the {len(source)} training images.')
    # shuffle draws a new permutation in each repetition (its seed folded with the epoch); random_map seeds each
    # example's generator with (seed, position in the run).
    examples = (grain.MapDataset.source(source).seed(seed).shuffle().repeat(num_epochs)
                .random_map(TrainTransform(image_size, resize, augment)))
    self.dataset = _ProcessBatches(examples, epoch_size=len(source), batches_per_epoch=steps_per_epoch,
                                   num_epochs=num_epochs, batch_size=batch_size, process_index=process_index,
                                   process_count=process_count)
    self.steps_per_epoch, self.workers, self.threads = steps_per_epoch, workers, threads
    self._iterator, self._next = None, -1

  def __call__(self, epoch: int, start: int) -> Iterator[Batch]:
    position = epoch * self.steps_per_epoch + start
    if start >= self.steps_per_epoch:  # resumed after the epoch's last step: nothing to read
      return
    if self._iterator is None or position != self._next:
      self.close()
      self._iterator, self._next = _iterate(self.dataset[position:], self.workers, self.threads), position
    for _ in range(start, self.steps_per_epoch):
      batch = next(self._iterator)
      self._next += 1
      yield batch

  def close(self) -> None:
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None

  def __enter__(self) -> TrainBatches:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def eval_batches(source: Sequence, batch_size: int, *, image_size: int = CROP, resize: int = RESIZE,
                 process_index: int = 0, process_count: int = 1, workers: int = 0, threads: int = 8
                 ) -> Iterator[EvalBatch]:
  """This process's slices of global batches covering `source` once, in order: uint8 centre crops, int32 labels
  and a float32 mask; the last global batch is padded (mask 0) to `batch_size`, as `data.batching.eval_batches`."""
  examples = grain.MapDataset.source(source).map(EvalTransform(image_size, resize))
  dataset = _ProcessBatches(examples, epoch_size=len(source), batches_per_epoch=-(-len(source) // batch_size),
                            num_epochs=1, batch_size=batch_size, process_index=process_index,
                            process_count=process_count, pad=True)
  iterator = _iterate(dataset, workers, threads)
  try:
    yield from iterator
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()


def check_classes(train: Sequence, val: Sequence, root: Path, num_classes: int) -> None:
  """Refuses splits whose class lists differ, or differ in number from `num_classes` (``data.num_classes``).

  Raises:
    ValueError: naming the difference.
  """
  if list(train.class_names) != list(val.class_names):
    only = sorted(set(train.class_names) ^ set(val.class_names))
    raise ValueError(f'{root}: the train and val splits have different classes ({len(train.class_names)} and '
                     f'{len(val.class_names)}; {", ".join(only[:5]) or "in another order"}).')
  if len(train.class_names) != num_classes:
    raise ValueError(f'{root} holds {len(train.class_names)} classes but data.num_classes={num_classes}; set '
                     f'--config.data.num_classes={len(train.class_names)}.')
