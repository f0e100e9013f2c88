"""The built-in rules of ``onnxopt check``, one module per concern.

Importing this package registers them; the import order below is the declaration order
that breaks ties in the run order (see :mod:`onnxopt.check.registry`).
"""

from onnxopt.check.rules import model_format, graph, session, budget, reference, hints  # noqa: F401, I001
