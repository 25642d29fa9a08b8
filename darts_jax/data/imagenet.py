"""ImageNet validation images for evaluation, prepared as the original's ``test_imagenet.py`` prepares them.

Each image is resized so that its shorter side is 256 pixels (PIL bilinear, as torchvision's ``Resize(256)`` on PIL
images), centre-cropped to 224×224 (``CenterCrop(224)``) and kept as uint8; normalisation with `MEAN` and `STD`
(``transforms.Normalize``) runs on device (`data.make_preprocess`). Two sources:

* a directory in torchvision's ``ImageFolder`` layout: one sub-directory per class (sorted names give labels 0, 1,
  ...; the usual ``val/n01440764/...JPEG``), images decoded with PIL;
* tensorflow-datasets' ``imagenet2012`` prepared (array_record) in a directory: its ``validation`` split.

The 50,000 images do not fit in host memory at this size comfortably, so they are streamed in batches.
"""
from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE, CROP = 256, 224
_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def center_crop(image: Any) -> np.ndarray:
  """A PIL image as (224, 224, 3) uint8: shorter side resized to 256 (bilinear), centre crop of 224."""
  from PIL import Image  # pillow comes with matplotlib
  image = image.convert('RGB')
  w, h = image.size
  if w <= h:
    size = (RESIZE, int(RESIZE * h / w))
  else:
    size = (int(RESIZE * w / h), RESIZE)
  image = image.resize(size, Image.BILINEAR)
  left, top = int(round((size[0] - CROP) / 2.0)), int(round((size[1] - CROP) / 2.0))
  return np.asarray(image.crop((left, top, left + CROP, top + CROP)), np.uint8)


def image_folder(directory: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray, list[str]]:
  """``(paths, labels, class_names)`` of an ImageFolder directory (classes = sorted sub-directories).

  Raises:
    FileNotFoundError: no such directory, or no class sub-directory with images.
  """
  root = Path(directory)
  if not root.is_dir():
    raise FileNotFoundError(f'{root} is not a directory of ImageNet images (expected one sub-directory per class, as '
                            'torchvision ImageFolder reads them)')
  classes = sorted(d.name for d in root.iterdir() if d.is_dir())
  paths, labels = [], []
  for label, name in enumerate(classes):
    files = sorted(p for p in (root / name).rglob('*') if p.suffix.lower() in _EXTENSIONS)
    paths += files
    labels += [label] * len(files)
  if not paths:
    raise FileNotFoundError(f'{root} holds no images in class sub-directories (ImageFolder layout: '
                            f'{root}/CLASS/IMAGE.JPEG)')
  return paths, np.asarray(labels, np.int32), classes


def eval_batches(source: str | os.PathLike[str], batch_size: int, workers: int = 8
                 ) -> tuple[int, int, Iterator[tuple[np.ndarray, np.ndarray]]]:
  """``(num_images, num_classes, batches)``: the validation images of `source` (an ImageFolder directory, or a
  directory holding tfds' prepared ``imagenet2012``) as uint8 (n ≤ batch_size, 224, 224, 3) and int32 labels,
  decoded by `workers` threads."""
  from PIL import Image
  root = Path(source)
  if (root / 'imagenet2012').is_dir():
    import tensorflow_datasets as tfds  # slow to import: only this source needs it
    builder = tfds.builder('imagenet2012', data_dir=str(root))
    data_source = builder.as_data_source(split='validation')
    num, num_classes = len(data_source), builder.info.features['label'].num_classes

    def read(indices):
      records = data_source.__getitems__(indices)
      return ([center_crop(Image.fromarray(r['image'])) for r in records],
              [r['label'] for r in records])
  else:
    paths, labels, classes = image_folder(root)
    num, num_classes = len(paths), len(classes)

    def read(indices):
      return [center_crop(Image.open(paths[i])) for i in indices], [labels[i] for i in indices]

  def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
    chunks = [list(range(s, min(s + batch_size, num))) for s in range(0, num, batch_size)]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      # Decoding is PIL work outside the GIL: threads over the images of a batch, one batch ahead.
      split = lambda chunk: [chunk[i:i + -(-len(chunk) // workers)] for i in range(0, len(chunk),
                                                                                  -(-len(chunk) // workers))]
      pending = None
      for chunk in chunks + [None]:
        submitted = None if chunk is None else [pool.submit(read, part) for part in split(chunk)]
        if pending is not None:
          parts = [f.result() for f in pending]
          yield (np.stack([im for images, _ in parts for im in images]),
                 np.asarray([l for _, part_labels in parts for l in part_labels], np.int32))
        pending = submitted

  return num, num_classes, batches()
