"""Runs read back from their workdirs, finished or running: `run_files` (a search workdir's records, alphas and
genotypes), `plots` (``convergence.png``, ``alphas.png``, ``alphas_evolution.png``) and `compare` (summary rows of
runs, the overlay of their curves, the accuracy-cost ranking and its plot). Above `training` (the records' formats)
and `dynamics`, below the tasks and the command lines; matplotlib loads with `plots` and `compare`, not with this
package.
"""
__all__ = ['compare', 'plots', 'run_files']
