# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""What the examples, benchmarks and tests share, kept out of the installed library.

``ssgd_optax`` holds what a user's training code calls; this package holds the
harness around it: the command-line layer (:mod:`.cli`), the data sets on
disk or embedded in other wheels (:mod:`.data`), the example and paper models
(:mod:`.models`) and the loader of example scripts by path (:mod:`.scripts`).

It is importable as ``ssgd_examples`` from ``examples/*.py`` (Python puts the
script's folder first on ``sys.path``); benchmarks and tests put
``examples/`` on ``sys.path`` first (:data:`EXAMPLES`).
"""

import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent
ROOT = EXAMPLES.parent

__all__ = ['EXAMPLES', 'ROOT']
