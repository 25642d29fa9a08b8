"""The original's PyTorch checkpoints in and out of darts_jax (`darts_jax.convert`), on a small network.

Builds the original's ``NetworkCIFAR`` in PyTorch (`darts_jax.torch_reference`: its modules and key names) with
random weights and BN statistics, saves it as a ``.pt`` file, and runs the conversion that the interoperability guide
shows (the lines between the ``[guide]`` markers are included there): load, convert, apply, compare the logits with
PyTorch's, and write the weights back as a checkpoint the original loads with ``strict=True``. Needs PyTorch.

    python examples/pytorch_round_trip.py
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from darts_jax import DARTS_V2, torch_reference

C, CLASSES, LAYERS = 4, 10, 3  # small: the paper's network is C=36, 20 cells


def main(directory: str | Path) -> float:
  """Converts a random original network saved in `directory`; returns the largest logit difference."""
  original = torch_reference.randomize_(torch_reference.NetworkCIFAR(C, CLASSES, LAYERS, True, DARTS_V2)).eval()
  torch.save(original.state_dict(), Path(directory) / 'cifar10_model.pt')
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    torch_logits, _ = original(torch.from_numpy(images.transpose(0, 3, 1, 2)))
  checkpoint, images_nhwc = Path(directory) / 'cifar10_model.pt', images
  # [guide] convert
  from darts_jax import convert

  state_dict = convert.load_torch_checkpoint(checkpoint)    # a bare state_dict, or {'state_dict': ...} with
                                                            # 'module.' prefixes (train_imagenet.py's format)
  variables = convert.from_torch_state_dict(state_dict, genotype='DARTS_V2')  # C, layers, classes and auxiliary
                                                            # head read from the shapes (infer_architecture)
  net = convert.network_for('DARTS_V2', C=C, num_classes=CLASSES, layers=LAYERS, auxiliary=True)
  logits, _ = net.apply(variables, images_nhwc, train=False)  # the original's logits, up to float rounding

  torch_state = convert.to_torch_state_dict(variables, genotype='DARTS_V2', layers=LAYERS, auxiliary=True)
  convert.save_torch_state_dict(torch_state, Path(directory) / 'from_jax.pt')  # loads into the original's network
  # [guide] end
  fresh = torch_reference.NetworkCIFAR(C, CLASSES, LAYERS, True, DARTS_V2)
  fresh.load_state_dict(torch.load(Path(directory) / 'from_jax.pt', weights_only=True), strict=True)
  return float(np.max(np.abs(np.asarray(logits) - torch_logits.numpy())))


if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as tmp:
    print(f'largest logit difference, darts_jax vs PyTorch: {main(tmp):.1e}')
