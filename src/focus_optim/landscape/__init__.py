"""The narrowing-valley lab (issue 3): the FOCUS paper's toy-landscape figures.

* :mod:`.valley` — the loss of Eq. (1), its exact gradient and multiplicative gradient noise;
* :mod:`.rng` — counter-based random numbers (independent of batching and sharding);
* :mod:`.simulate` — every trajectory of a sweep as a row of batched tensors, stepped by the
  project's own optimizers;
* :mod:`.figures` — one :class:`~focus_optim.sweep.SweepSpec` per paper figure, with presets;
* :mod:`.analysis` — best learning rates, phase diagrams, pairwise comparisons;
* :mod:`.plots` — the figures; :mod:`.regret` — section 4's online convex check;
* :mod:`.workers` — one figure on several local processes;
* :mod:`.cli` — ``focus-optim toy run|plot|regret``.

Import the submodules directly; this package imports nothing heavy.
"""
