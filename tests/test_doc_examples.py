"""The example files whose lines the docs include (``literalinclude``) run and do what the docs say."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'examples'))


def test_pytorch_round_trip_reproduces_the_originals_logits(tmp_path):
  pytest.importorskip('torch')
  import pytorch_round_trip  # pylint: disable=import-outside-toplevel
  # float32 through 3 cells of the same ops in two frameworks: rounding differences of ~1e-6 relative, logits O(1).
  assert pytorch_round_trip.main(tmp_path) < 1e-4
  assert (tmp_path / 'from_jax.pt').is_file()
