"""The command lines, one module per command; each module's ``main`` is its console script::

    darts-search     search          an architecture search (CNN or recurrent space); also ``run_search.py``
    darts-retrain    retrain         retraining a genotype from scratch and testing it; also ``run_retrain.py``
    darts-evaluate   evaluate        test accuracy of a retrain workdir, or of the original's PyTorch checkpoint
    darts-export     export          a retrain workdir's network as a `jax.export` artifact
    darts-plots      plots           the dynamics plots of a search workdir
    darts-compare    compare         a table, an overlay and a cost ranking of search and retrain workdirs
    darts-cost       cost            parameters, multiply-adds and latency of a genotype's network
    darts-genotypes  genotypes       a genotype in another tool's format
    darts-protocol   protocol        the paper's protocol: seeds, selection, final retraining
    darts-select     select          a genotype from a finished search's supernet: DARTS-PT, magnitude, best of N
    darts-random     random_genotypes  random genotypes of a space, for the retrain task
    darts-pdarts     pdarts          P-DARTS's staged search (CNN space), one workdir
    darts-bench      bench           the search step's timing (``--suite accelerator``: bench_accelerator)
                     bench_data      the host input pipelines' throughput
                     bench_rnn       the recurrent search step's timing

``python -m darts_jax.cli.NAME`` runs the same command. The modules need the ``[cli]`` extra; this package's import
loads none of them.
"""
__all__ = ['bench', 'bench_accelerator', 'bench_data', 'bench_rnn', 'compare', 'cost', 'evaluate', 'export',
           'genotypes', 'pdarts', 'plots', 'protocol', 'random_genotypes', 'retrain', 'search', 'select']
