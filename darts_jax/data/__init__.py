"""Input pipeline for DARTS search and retraining, in three stages (flax-examples' `input_pipeline.py` style):

1. `sources` (host, numpy): `load_dataset` reads the official files into uint8 NHWC images and int32 labels.
2. `batching` (host, numpy): the search split, deterministic resumable epochs of global batches, prefetching.
3. `augment` (device, jax): augmentation, cutout and normalisation inside the jitted steps.

ImageNet, too large for host memory, is `imagenet`: JPEGs decoded and augmented on the host by a grain pipeline,
normalised on the device.
"""
from darts_jax.data.augment import (Preprocess, cutout, example_keys, make_cutout, make_preprocess, normalize,
                                    random_crop_flip)
from darts_jax.data.batching import Prefetcher, epoch_batches, eval_batches, num_batches, search_split, sharded
from darts_jax.data.sources import (DATA_DIR_ENV, DATASETS, Dataset, DatasetNotFoundError, class_names, load_dataset,
                                    select_classes)

__all__ = ['DATASETS', 'DATA_DIR_ENV', 'Dataset', 'DatasetNotFoundError', 'Prefetcher', 'Preprocess', 'class_names',
           'cutout', 'epoch_batches', 'eval_batches', 'example_keys', 'load_dataset', 'make_cutout', 'make_preprocess',
           'normalize', 'num_batches', 'random_crop_flip', 'search_split', 'select_classes', 'sharded']
