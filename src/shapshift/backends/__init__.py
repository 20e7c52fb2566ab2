"""Model backends and what each declares it can do (:mod:`~shapshift.backends.capabilities`).

One module per backend: a model in this process (:mod:`shapshift.models`, :data:`~.capabilities.LOCAL`), a
server that echoes prompt log-probabilities (:mod:`shapshift.remote`), one that returns the top-k log-probabilities
of generated tokens (:mod:`.topk`), one that returns text only (:mod:`.text`, scored by :mod:`.scalarizers`).
:func:`shapshift.backends.load.load_model` chooses one from the model spec. This package's ``__init__`` imports
nothing heavy, so that any module may read :func:`~.capabilities.capabilities` without an import cycle.
"""

from .capabilities import ACCESS, LOCAL, ROUTES, TIERS, Capabilities, capabilities

__all__ = ["ACCESS", "LOCAL", "ROUTES", "TIERS", "Capabilities", "capabilities"]
