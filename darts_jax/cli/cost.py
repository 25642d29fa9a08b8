"""What a genotype's network costs: parameters, multiply-adds and latency.

    python -m darts_jax.cli.cost --genotype DARTS_V2 [--network cifar|imagenet] [--C 36] [--layers 20]
        [--num_classes 10] [--image_size 32] [--in_channels 3] [--auxiliary] [--latency [--repeats 20]
        [--latency_cache DIR] [--depthwise_impl auto|shift|xla]] [--json]

``--genotype`` takes what ``run_retrain.py --config.genotype`` takes: a known name, a search or retrain workdir, a
genotype.json file, or the genotype as JSON, ``Genotype(...)`` text or NNI dict. Defaults per network: CIFAR
C=36, 20 cells, 10 classes, 32×32×3; ImageNet C=48, 14 cells, 1000 classes, 224×224×3 (the paper's). Multiply-adds
count the convolutions (depthwise and pointwise included) and the classifier, not BN, ReLU, pooling or additions
(`darts_jax.cnn.cost`). ``--latency`` times every op of the network on this machine (`darts_jax.cnn.latency`;
cached per device and jax version), prints the table's estimate, the whole network's measured latency at batch 1
and the estimate's error. ``--json`` prints one JSON object: ``params``, ``macs`` and with ``--latency``
``latency_ms`` (``estimate``, ``measured``) and ``latency_error`` (estimate / measured − 1).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from darts_jax.cnn import cost
from darts_jax.cnn.genotype_formats import load_genotype
from darts_jax.cnn.ops import DEPTHWISE_IMPLS
from darts_jax.training import cli

PROG = 'darts-cost'
NETWORK_DEFAULTS = {'cifar': dict(C=36, layers=20, num_classes=10, image_size=32),
                    'imagenet': dict(C=48, layers=14, num_classes=1000, image_size=224)}


def report(args: argparse.Namespace) -> dict[str, Any]:
  """The numbers the CLI prints, for parsed arguments."""
  genotype = load_genotype(args.genotype)
  shape = {key: getattr(args, key) if getattr(args, key) is not None else default
           for key, default in NETWORK_DEFAULTS[args.network].items()}
  for key, value in shape.items():
    if value < 1:
      raise ValueError(f'--{key} must be positive, got {value}')
  network = dict(network=args.network, in_channels=args.in_channels, **shape)
  units = cost.network_units(genotype, auxiliary=args.auxiliary, **network)
  total = cost.total_cost(units)
  result: dict[str, Any] = {'genotype': str(args.genotype), **network, 'auxiliary': args.auxiliary,
                            'params': total.params, 'macs': total.macs}
  if args.latency:
    from darts_jax.cnn import latency  # jax's compile and timing only when asked for
    table = latency.LatencyTable(args.latency_cache or None, repeats=args.repeats,
                                 depthwise_impl=args.depthwise_impl)
    estimate = latency.estimate_latency(cost.network_units(genotype, **network), table)
    table.save()
    measured = latency.measure_network_latency(genotype, repeats=args.repeats, depthwise_impl=args.depthwise_impl,
                                               **network)
    result.update(latency_ms={'estimate': estimate, 'measured': measured}, latency_error=estimate / measured - 1,
                  latency_table=str(table.path), latency_units_measured=table.measured)
  return result


def format_report(result: dict[str, Any]) -> str:
  name = 'NetworkCIFAR' if result['network'] == 'cifar' else 'NetworkImageNet'
  size = result['image_size']
  lines = [f'{result["genotype"]} as {name}(C={result["C"]}, layers={result["layers"]}, '
           f'{result["num_classes"]} classes) on {size}x{size}x{result["in_channels"]} images'
           + (', with the auxiliary head' if result['auxiliary'] else '') + ':',
           f'  parameters          {result["params"]:>14,}  ({result["params"] / 1e6:.3f} M'
           + ('' if result['auxiliary'] else ', without the auxiliary head') + ')',
           f'  multiply-adds       {result["macs"]:>14,}  ({result["macs"] / 1e6:.1f} M: convolutions and the '
           'classifier; BN, ReLU, pooling and additions not counted)']
  if 'latency_ms' in result:
    ms = result['latency_ms']
    lines += [f'  latency, estimate   {ms["estimate"]:>11.3f} ms  (sum over the ops, batch 1; table '
              f'{result["latency_table"]}, {result["latency_units_measured"]} entries measured now)',
              f'  latency, measured   {ms["measured"]:>11.3f} ms  (whole network, batch 1, median)',
              f'  estimate error      {100 * result["latency_error"]:>+11.1f} %']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--genotype', required=True,
                      help='a known name (DARTS_V2, ...), a search or retrain workdir, a genotype.json file, or the '
                           'genotype as JSON, Genotype(...) text or NNI dict')
  parser.add_argument('--network', choices=cost.NETWORKS, default='cifar')
  parser.add_argument('--C', type=int, help='initial channels (cifar: 36, imagenet: 48)')
  parser.add_argument('--layers', type=int, help='cells (cifar: 20, imagenet: 14)')
  parser.add_argument('--num_classes', type=int, help='classes (cifar: 10, imagenet: 1000)')
  parser.add_argument('--image_size', type=int, help='input height and width (cifar: 32, imagenet: 224)')
  parser.add_argument('--in_channels', type=int, default=3, help='input channels (default 3)')
  parser.add_argument('--auxiliary', action='store_true', help='count the auxiliary head too')
  parser.add_argument('--latency', action='store_true', help='measure the latency on this machine')
  parser.add_argument('--repeats', type=int, default=20, help='timed calls per measurement (median)')
  parser.add_argument('--depthwise_impl', choices=DEPTHWISE_IMPLS, default='auto',
                      help='depthwise convolutions (darts_jax.cnn.ops): auto (shift on CPU, xla elsewhere)')
  parser.add_argument('--latency_cache', default='', help='directory of the latency tables (default '
                                                          '$DARTS_JAX_CACHE/latency or ~/.cache/darts_jax/latency)')
  parser.add_argument('--json', action='store_true', help='print one JSON object')
  args = parser.parse_args(argv)
  result = cli.run(PROG, lambda: report(args))
  print(json.dumps(result) if args.json else format_report(result))


if __name__ == '__main__':
  main()
