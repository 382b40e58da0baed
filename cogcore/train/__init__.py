"""Training recipe for the shipped ``cogcore-tiny`` model (optional: needs the ``train`` extra, PyTorch).

    python -m cogcore.train --out weights/cogcore-tiny

Nothing in the runtime imports this package; ``cogcore.tasks`` (pure Python) holds
the task generators shared with ``cogcore eval``.
"""
