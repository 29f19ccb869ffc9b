"""MNIST batch-size lab (issue 4): the paper's Figure 2c/2d with vectorised ensembles.

Modules (each imports its heavy dependencies lazily):

* :mod:`.data`       IDX reader (gz or raw), checksums, mirrors, directory resolution;
* :mod:`.model`      the paper's MLP as an ensemble of E members (stacked weights, batched matmuls);
* :mod:`.optimizers` optimizer configurations by name (``adamw``, ``focus:gamma=0.4``, any registry name);
* :mod:`.train`      one cell: E members trained together, Sophia-style protocol hooks, fast test pass;
* :mod:`.scan`       presets and the sweep (``focus_optim.sweep``) over optimizer x batch size;
* :mod:`.analysis`   best learning rate, I_Signum, crossover;
* :mod:`.plots`      Figure 2c/2d;
* :mod:`.cli`        ``focus-optim mnist run|plot|fetch``.

See ``docs/mnist.md``.
"""
