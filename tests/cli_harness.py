"""Runs many command lines of the project's CLIs from one interpreter: ``python tests/cli_harness.py < cases.json``.

A CLI started as its own interpreter spends ~3 s importing jax and the package before it reads its arguments, which
dominated the tests of one-line errors. This harness imports the CLIs' modules once, then forks one child per command
line. Each child is still a separate process with its own argv, environment, working directory, stdout/stderr and
exit status, and runs the CLI exactly as ``python SCRIPT`` / ``python -m MODULE`` would (``runpy``, as
``__main__``); only the imports are shared, and no JAX backend exists before the fork (a child that sets
``XLA_FLAGS``, e.g. a host device count, gets it when it creates its backend).

stdin: a JSON list of cases ``{"argv": ["run_search.py" | "-m", "darts_jax.cli.evaluate", ...], "env": {...}, "cwd": ...}``.
stdout: a JSON list of ``{"returncode": int, "stdout": str, "stderr": str}``, in the same order.
"""
import importlib
import json
import os
import runpy
import sys
import tempfile
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# What the CLIs import, loaded once for every child (their `__main__` blocks do not run here).
for _module in ('run_search', 'run_retrain', 'darts_jax.cli.evaluate'):
  importlib.import_module(_module)
from jax._src import xla_bridge  # noqa: E402

assert not xla_bridge._backends, 'a JAX backend was created before the fork'


def _child(case: dict, stdout_path: str, stderr_path: str) -> None:
  """Runs one command line in this (forked) process and exits with its status, as the interpreter would."""
  for fd, path in ((1, stdout_path), (2, stderr_path)):
    os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
  os.environ.update(case.get('env', {}))
  os.chdir(case.get('cwd', REPO))
  argv = case['argv']
  code = 0
  try:
    if argv[0] == '-m':
      sys.argv = [argv[1]] + argv[2:]
      sys.modules.pop(argv[1], None)  # executed afresh as __main__ (its imports stay loaded), as `python -m` does
      runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    else:
      sys.argv = list(argv)
      runpy.run_path(argv[0], run_name='__main__')
  except SystemExit as e:  # the interpreter's handling of sys.exit(code)
    if isinstance(e.code, str):
      sys.stderr.write(e.code + '\n')
      code = 1
    else:
      code = e.code or 0
  except BaseException:  # an uncaught exception: the interpreter prints the traceback and exits 1
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def main() -> None:
  results = []
  with tempfile.TemporaryDirectory() as directory:
    for i, case in enumerate(json.load(sys.stdin)):
      paths = {stream: os.path.join(directory, f'{i}.{stream}') for stream in ('stdout', 'stderr')}
      sys.stdout.flush()
      pid = os.fork()
      if pid == 0:
        _child(case, paths['stdout'], paths['stderr'])
      _, status = os.waitpid(pid, 0)
      result = {'returncode': os.waitstatus_to_exitcode(status)}
      for stream, path in paths.items():
        with open(path) as f:
          result[stream] = f.read()
      results.append(result)
  json.dump(results, sys.stdout)


if __name__ == '__main__':
  main()
