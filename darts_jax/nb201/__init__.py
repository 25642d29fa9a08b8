"""NAS-Bench-201's search space (Dong & Yang, ICLR 2020): one cell of 4 nodes and 6 edges, 5 candidate ops per edge,
stacked in 3 stages of N cells with residual reduction blocks between them; every one of its 5^6 = 15,625
architectures was trained, so a search's result is scored by a lookup in the benchmark's file.

* `genotypes`: the ops, the edges, a genotype (one op per edge), the benchmark's architecture string
  (``|nor_conv_3x3~0|+|...|``) both ways, the genotype rule.
* `model`: the ops, the cell, the macro network (the supernet with mixing weights, or a genotype's network) and
  their parameter and multiply-add counts as the benchmark counts them.
* `benchmark`: the lookup of an architecture's trained accuracies in the user's benchmark file (optional extra).
"""
