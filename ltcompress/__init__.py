"""ltcompress: distill a large image classifier into a small edge model without losing the rare classes."""

from ltcompress import layout  # noqa: F401  (first: a source checkout's export/ and presets/ become subpackages)
from ltcompress.api import CompressResult, compress
from ltcompress.options import build_config
from ltcompress.config import CompressConfig, list_presets
from ltcompress.errors import LTCompressError
from ltcompress.methods import MethodInfo, list_methods, register_method
from ltcompress.exported import VerifyResult, verify_export

__all__ = [
    "compress",
    "build_config",
    "CompressConfig",
    "CompressResult",
    "LTCompressError",
    "MethodInfo",
    "list_methods",
    "list_presets",
    "register_method",
    "verify_export",
    "VerifyResult",
]
__version__ = "0.1.0"
