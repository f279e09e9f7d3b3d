"""The tiny world: a procedural stand-in for X-Dyna's data, and everything that trains and scores a tiny X-Dyna
on it (docs/TINY_WORLD.md). It sits on top of the other packages (models < porting < data < sampling < training
< eval < world): nothing below imports it; ``train.py`` and ``sample.py`` plug it in.

* ``generator``: the clips (figures, backgrounds, conditions, exact figure masks and background plates);
* ``source``: the clips as a training source (drawn per step, or a pre-encoded pool);
* ``probe``: one-step x0 predictions on held-out clips (the pilot's measure, ``train.eval_every``);
* ``recipe``: ``make tiny-world``, every stage through ``train.py``;
* ``score``: ``python -m xdyna_jax.world.score``, the held-out scores of exported weights;
* ``jobs``: held-out clips as sampling jobs, and ``sample.py``'s embedded default.
"""
