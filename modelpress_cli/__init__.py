"""modelpress: shrink saved neural-network weights into a checked, streamable .mpz file.

The API the command line is a thin layer over::

    import modelpress_cli as mp
    report = mp.compress("model.h5", "model.mpz", bits=4)
    weights = mp.load("model.mpz")            # dict of name -> numpy array
    mp.decompress("model.mpz", "model.safetensors")
"""

__version__ = "0.1.0"

from .api import compress, decompress, inspect, load, verify  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    FormatError,
    IntegrityError,
    ModelpressError,
    OutputExistsError,
)
from .pipeline import Options  # noqa: E402

__all__ = ["ConfigError", "FormatError", "IntegrityError", "ModelpressError", "Options",
           "OutputExistsError", "__version__", "compress", "decompress", "inspect", "load",
           "verify"]
