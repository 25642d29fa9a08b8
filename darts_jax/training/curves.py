"""Training curves of a run: ``plot_curves`` draws loss and accuracy per epoch from a ``metrics.jsonl`` with
matplotlib's Agg canvas, without touching pyplot's global state."""
import json
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

_SPLITS = ('train', 'valid', 'test')


def read_epoch_records(path: str | os.PathLike[str]) -> list[dict]:
  """Epoch records of a metrics.jsonl, one per epoch (the last wins), sorted."""
  by_epoch = {}
  with open(path) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{line_no} is not valid JSON: {e}') from None
      # Step records carry 'step' but no 'epoch'; a resumed run may log an
      # epoch again, and its latest record is the one that counts.
      if isinstance(record, dict) and 'epoch' in record:
        by_epoch[record['epoch']] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def _curves_figure(records: list[dict]) -> Figure:
  """Loss and accuracy panels, one line per split present in the records."""
  fig = Figure(figsize=(11, 4), layout='constrained')
  FigureCanvasAgg(fig)
  for ax, metric in zip(fig.subplots(1, 2), ('loss', 'accuracy')):
    for split in _SPLITS:
      key = f'{split}_{metric}'
      points = [(r['epoch'], r[key]) for r in records if r.get(key) is not None]
      if points:
        epochs, values = zip(*points)
        ax.plot(epochs, values, marker='o', markersize=3, label=split)
    ax.set_xlabel('epoch')
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.has_data():
      ax.legend()
  return fig


def plot_curves(metrics_jsonl_path: str, out_path: str) -> str:
  """Plots loss and accuracy per epoch from a metrics.jsonl.

  Reads the records that have an ``epoch`` key and draws two panels, loss and
  accuracy against epoch, with one line per split among ``train``, ``valid``
  and ``test`` for which ``{split}_loss`` / ``{split}_accuracy`` keys exist.
  The image format follows the extension of ``out_path`` (PNG for ``.png``).

  Args:
    metrics_jsonl_path: a JSON-lines file, one JSON object per line.
    out_path: where to write the figure; missing directories are created.

  Returns:
    ``out_path``.

  Raises:
    FileNotFoundError: if the metrics file does not exist.
    ValueError: if a line is not JSON or no record has an ``epoch`` key.
  """
  records = read_epoch_records(metrics_jsonl_path)
  if not records:
    raise ValueError(
        f'{metrics_jsonl_path} has no epoch records (JSON lines with an '
        f"'epoch' key); has the run finished an epoch?"
    )
  fig = _curves_figure(records)
  os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
  fig.savefig(out_path, dpi=100)
  return out_path
