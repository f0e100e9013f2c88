"""Built-in passes, one per module; importing this package registers them all.

Installed as ``onnxopt.passes`` (see ``pyproject.toml``). Each module's docstring states
its transformation; ``onnxopt passes`` lists names, options and capabilities.
"""

from onnxopt.passes.auto import SearchDecompositionPass
from onnxopt.passes.cp import DecomposeCpPass
from onnxopt.passes.fold_constants import FoldConstantsPass
from onnxopt.passes.fp16 import ConvertFloat16Pass
from onnxopt.passes.quantize_dynamic import QuantizeDynamicPass
from onnxopt.passes.quantize_static import QuantizeStaticPass
from onnxopt.passes.recover import RecoverPass
from onnxopt.passes.separable import DecomposeSeparablePass
from onnxopt.passes.simplify import SimplifyPass
from onnxopt.passes.spatial import DecomposeSpatialPass
from onnxopt.passes.svd import DecomposeSvdPass
from onnxopt.passes.tucker import DecomposeTuckerPass

__all__ = [
    "ConvertFloat16Pass",
    "DecomposeCpPass",
    "DecomposeSeparablePass",
    "DecomposeSpatialPass",
    "DecomposeSvdPass",
    "DecomposeTuckerPass",
    "FoldConstantsPass",
    "QuantizeDynamicPass",
    "QuantizeStaticPass",
    "RecoverPass",
    "SearchDecompositionPass",
    "SimplifyPass",
]
