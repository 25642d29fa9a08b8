"""run_search.py's command line on `test_search.TinySupernet`, for test_multiprocess.py's processes.

With ``$KILL_AFTER_STEP`` set, each process kills itself with SIGKILL right after the checkpoint of that step is
saved (saving is collective, so every process has it): both processes die at a known point, as a cluster job
killed without warning. The plots are not drawn.
"""
import os
import signal

from darts_jax.spaces import cnn as cnn_space
from darts_jax.tasks import search
from darts_jax.training import cli
from darts_jax.training.checkpointing import Checkpointer
from test_search import TinySupernet

cnn_space.SearchNetwork = TinySupernet
# The plots (seconds of matplotlib and graphviz) are not what this test is about; genotype.json and alphas.npz are.
cnn_space.plots.plot_genotype = search.curves.plot_curves = cnn_space.run_plots.plot_search = lambda *args: None

if os.environ.get('KILL_AFTER_STEP'):
  _kill_step, _save = int(os.environ['KILL_AFTER_STEP']), Checkpointer.save

  def _save_then_die(self, step, *args, **kwargs):
    saved = _save(self, step, *args, **kwargs)
    if step == _kill_step:
      os.kill(os.getpid(), signal.SIGKILL)
    return saved

  Checkpointer.save = _save_then_die

if __name__ == '__main__':
  cli.main('run_search.py', search.search, example_config='configs/search_quick.py')
