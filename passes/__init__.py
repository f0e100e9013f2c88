"""Built-in passes, one per module; importing this package registers them all.

Installed as ``onnxopt.passes`` (see ``pyproject.toml``). Each module's docstring states
its transformation; ``onnxopt passes`` lists names, options and capabilities.
"""

from onnxopt.passes.fold_constants import FoldConstantsPass
from onnxopt.passes.simplify import SimplifyPass

__all__ = ["FoldConstantsPass", "SimplifyPass"]
