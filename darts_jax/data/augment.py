"""On-device preprocessing (jax), run inside the jitted steps: CIFAR augmentation, cutout, normalisation.

The original DARTS training transform is RandomCrop(32, padding=4) -> RandomHorizontalFlip -> ToTensor -> Normalize
(-> Cutout when enabled); the device equivalent is `make_preprocess` (crop/flip per example, resize, normalise)
followed, when retraining, by `make_cutout`. Every random draw of an example uses its own key, ``fold_in(rng, i)``
for its index ``i`` in the *global* batch (`example_keys`), so a step does not depend on the number of devices.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Preprocess = Callable[[jax.Array | None, jax.Array], jax.Array]  # (rng, uint8 images) -> network inputs


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
  """Per-channel standardization of NHWC images in [0, 255].

  x_normalized = (x / 255 - mean) / std, with mean and std of shape (C,) in
  [0, 1] units (torchvision's ToTensor then Normalize).

  Returns:
    float32 images of the input's shape.
  """
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(rng: jax.Array, images: jax.Array,
                     padding: int = 4) -> jax.Array:
  """CIFAR augmentation: zero-pad, random crop back, random horizontal flip.

  Each image is padded by `padding` zeros on every side and a window of the
  original (H, W) is cut at a uniform offset (dy, dx) in {0, ..., 2 padding}^2
  (torchvision's RandomCrop(H, padding)); then it is mirrored left-right with
  probability 1/2. Apply it to the [0, 255] images *before* `normalize`: the
  original pads the PIL image, so the padding is black, not the mean.

  Args:
    rng: PRNG key; the per-image offsets and flips are drawn from it.
    images: (N, H, W, C) images of any dtype (uint8 is kept).

  Returns:
    Augmented images, same shape and dtype.
  """
  n, h, w, c = images.shape
  key_y, key_x, key_flip = jax.random.split(rng, 3)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  dy = jax.random.randint(key_y, (n,), 0, 2 * padding + 1)
  dx = jax.random.randint(key_x, (n,), 0, 2 * padding + 1)
  crop = jax.vmap(lambda x, y0, x0: lax.dynamic_slice(x, (y0, x0, 0),
                                                      (h, w, c)))
  images = crop(padded, dy, dx)
  flip = jax.random.bernoulli(key_flip, 0.5, (n,))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def cutout(rng: jax.Array, images: jax.Array, length: int = 16) -> jax.Array:
  """Cutout (DeVries & Taylor, 2017), as in DARTS' `utils.Cutout`.

  Per image, a center (cy, cx) is drawn uniformly over the H x W pixels and
  the pixels with cy - length//2 <= y < cy + length//2 and
  cx - length//2 <= x < cx + length//2 (clipped at the borders) are set to 0
  in every channel. The original applies it after normalization, so 0 is the
  mean colour.

  Args:
    rng: PRNG key; the per-image centers are drawn from it.
    images: (N, H, W, C) images.
    length: Side of the square (before clipping).

  Returns:
    Images of the same shape and dtype.
  """
  n, h, w, _ = images.shape
  key_y, key_x = jax.random.split(rng)
  cy = jax.random.randint(key_y, (n, 1), 0, h)
  cx = jax.random.randint(key_x, (n, 1), 0, w)
  half = length // 2
  # Comparing against the pixel indices clips the square at the borders.
  rows, cols = jnp.arange(h), jnp.arange(w)
  in_rows = (rows >= cy - half) & (rows < cy + half)  # (N, H)
  in_cols = (cols >= cx - half) & (cols < cx + half)  # (N, W)
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (N, H, W)
  return images * keep[..., None].astype(images.dtype)


def example_keys(rng: jax.Array, batch_size: int, axis_name: str | None) -> jax.Array:
  """One key per example, ``fold_in(rng, i)`` for its index ``i`` in the *global* batch.

  Under ``pmap`` device d holds global examples ``[d·n, (d+1)·n)``, so augmentations do not depend on the number of
  devices.
  """
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(batch_size))


def make_preprocess(mean: np.ndarray, std: np.ndarray, *, augment: bool = False, image_size: int = 0,
                    axis_name: str | None = None) -> Preprocess:
  """Builds ``preprocess(rng, uint8_images) -> float32 images``, run on device inside the steps.

  In order: the CIFAR augmentation if `augment` (`random_crop_flip`: random crop with 4 padding and horizontal
  flip, each example drawing from its own key, see `example_keys`; ``rng`` is read only here), resizing to
  `image_size` x `image_size` (bilinear, antialiased) if `image_size` > 0, and `normalize` with the dataset's
  per-channel `mean` and `std` (in [0, 1] units).

  Args:
    mean: per-channel mean, shape (C,).
    std: per-channel standard deviation, shape (C,).
    augment: apply the augmentation.
    image_size: side of the network's input; 0 keeps the dataset's size.
    axis_name: the pmap axis the batch is sharded over, if any (makes augmentations device-count independent).
  """
  def preprocess(rng: jax.Array | None, images: jax.Array) -> jax.Array:
    if augment:
      keys = example_keys(rng, images.shape[0], axis_name)
      images = jax.vmap(lambda k, x: random_crop_flip(k, x[None])[0])(keys, images)
    if image_size:
      n, _, _, c = images.shape
      images = jax.image.resize(images.astype(jnp.float32), (n, image_size, image_size, c), 'linear')
    return normalize(images, mean, std)

  return preprocess


def make_cutout(length: int, axis_name: str | None = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``cutout(rng, images)``: `cutout` of side `length` with one key per example (`example_keys`), so the squares
  do not depend on the number of devices under ``pmap``."""
  def apply(rng: jax.Array, images: jax.Array) -> jax.Array:
    keys = example_keys(rng, images.shape[0], axis_name)
    return jax.vmap(lambda k, x: cutout(k, x[None], length)[0])(keys, images)

  return apply
