"""A portable inference artifact of a retrained network: serialized `jax.export` with the weights inside.

    export_workdir(WORKDIR, output=DIR)     # or the command line: darts-export --workdir WORKDIR [--output DIR]

writes ``DIR/model.jax_export`` (default ``DIR = WORKDIR/export``), the serialized `jax.export.Exported` of

    logits = f(images)        images: uint8 (N, H, W, C), pixel values 0..255;  logits: float32 (N, num_classes)

for any batch size N (a symbolic dimension): the eval-mode network (BN with running statistics, no drop path, no
auxiliary head, RobustDARTS's ``noise`` op with its fixed evaluation key) of the workdir's latest checkpoint, its
weights as constants, with the training's input preprocessing (resize to ``data.image_size`` if set, normalisation by
the dataset's mean and std) inside; an ImageNet network takes the evaluation crops (``data.image_size``, e.g.
224x224, `data.imagenet.center_crop`). It is lowered for CPU and CUDA, each with its own depthwise formulation
(`platform_depthwise_impls`: ``'auto'`` is resolved per platform, not for the exporting host). Beside it,
``model.json`` holds the input spec (``input_shape`` with ``null`` for N, ``input_dtype``, ``layout``),
``class_names`` by output index, ``num_classes``, ``dataset``, the ``genotype``, ``step``, ``platforms``,
``depthwise_impl`` by platform and the jax version that wrote it.

`load(path)` returns the callable back in any process with jax installed, without this package's model code (it
needs only ``jax``): ``load('runs/x/export')(images)`` or ``load('.../model.jax_export')``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export
from jax import lax

from darts_jax import data
from darts_jax.cnn import genotype_formats, ops
from darts_jax.cnn.networks import eval_rngs
from darts_jax.data import imagenet, retrain_data
from darts_jax.spaces.cnn_retraining import restore_workdir

ARTIFACT = 'model.jax_export'
SPEC = 'model.json'
PLATFORMS = ('cpu', 'cuda')


def platform_depthwise_impls(impl: ops.DepthwiseImpl, platforms: tuple[str, ...]) -> dict[str, str]:
  """The depthwise formulation each of `platforms` (`jax.export` names: cpu, cuda, rocm, tpu) runs: `impl`, with
  ``'auto'`` resolved for that platform as `ops.resolve_depthwise_impl` resolves it for the default backend."""
  ops.resolve_depthwise_impl(impl)  # an unknown name fails here
  return {platform: ops.AUTO_DEPTHWISE_IMPL.get(platform, ops.AUTO_DEPTHWISE_IMPL_ELSEWHERE) if impl == 'auto'
          else impl for platform in platforms}


def export_workdir(workdir: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                   platforms: tuple[str, ...] = PLATFORMS) -> Path:
  """Exports the latest checkpoint of the retrain run in `workdir` to `output` (default ``workdir/export``).

  Returns:
    The output directory, holding ``model.jax_export`` and ``model.json``.

  Raises:
    FileNotFoundError, ValueError: as `spaces.cnn_retraining.restore_workdir` (not a retrain workdir, no checkpoint).
  """
  restored = restore_workdir(workdir)
  config = restored.config
  if retrain_data.is_imagenet(config):  # inputs are the evaluation crops (resize 256, centre crop 224)
    h, w, c = retrain_data.image_shape(config)
    preprocess = data.make_preprocess(imagenet.MEAN, imagenet.STD)
  else:
    spec = data.DATASETS[config.data.name]
    h, w, c = spec.image_shape
    preprocess = data.make_preprocess(np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32),
                                      image_size=config.data.image_size)
  variables = {'params': restored.state.params, 'batch_stats': restored.state.batch_stats}
  impls = platform_depthwise_impls(restored.model.depthwise_impl, platforms)

  def network(impl):  # one traced function per formulation: platforms that share one share its code
    model = restored.model.clone(depthwise_impl=impl)
    return lambda images: model.apply(variables, preprocess(None, images), train=False, rngs=eval_rngs())[0]

  networks = {impl: network(impl) for impl in set(impls.values())}

  def infer(images: jax.Array) -> jax.Array:
    # The artifact branches on the platform; the branch is picked before compiling, so XLA sees one formulation.
    return lax.platform_dependent(images, **{platform: networks[impl] for platform, impl in impls.items()})

  batch = jax_export.symbolic_shape('N')[0]
  exported = jax_export.export(jax.jit(infer), platforms=platforms)(jax.ShapeDtypeStruct((batch, h, w, c), jnp.uint8))
  output = Path(output) if output else Path(workdir) / 'export'
  output.mkdir(parents=True, exist_ok=True)
  (output / ARTIFACT).write_bytes(exported.serialize())
  names = retrain_data.class_names(config)
  (output / SPEC).write_text(json.dumps({
      'input_shape': [None, h, w, c], 'input_dtype': 'uint8', 'layout': 'NHWC, pixel values 0..255',
      'output': f'float32 logits (N, {len(names)})', 'class_names': names, 'num_classes': len(names),
      'dataset': config.data.name, 'genotype': json.loads(genotype_formats.genotype_to_json(restored.genotype)),
      'step': restored.step, 'platforms': list(platforms), 'depthwise_impl': impls, 'jax_version': jax.__version__},
      indent=1) + '\n')
  return output


@dataclasses.dataclass(frozen=True)
class Served:
  """An exported network: ``served(images) -> logits`` (a jax array), and its ``spec`` (the content of
  ``model.json``, empty when loading a bare artifact)."""
  exported: jax_export.Exported
  spec: dict[str, Any]

  def __call__(self, images: Any) -> jax.Array:
    return self.exported.call(jnp.asarray(images))


def load(path: str | os.PathLike[str]) -> Served:
  """The network exported to `path` (the export directory or its ``model.jax_export``) as a callable.

  Raises:
    FileNotFoundError: nothing exported there. ValueError: the file is not a serialized `jax.export` artifact.
  """
  path = Path(path)
  artifact = path / ARTIFACT if path.is_dir() else path
  if not artifact.is_file():
    raise FileNotFoundError(f'{artifact} does not exist: export a retrain workdir with darts-export '
                            '--workdir DIR first.')
  try:
    exported = jax_export.deserialize(bytearray(artifact.read_bytes()))
  except Exception as e:  # flatbuffers raises assorted errors on a file that is not an artifact
    raise ValueError(f'{artifact} is not a serialized jax.export artifact ({type(e).__name__}).') from None
  spec_path = artifact.with_name(SPEC)
  spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
  return Served(exported, spec)
