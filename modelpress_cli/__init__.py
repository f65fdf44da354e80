"""modelpress: shrink saved neural-network weights into a checked, streamable .mpz file.

The API the command line is a thin layer over (docs/api.md)::

    import modelpress_cli as mp
    report = mp.compress("model.h5", "model.mpz", bits=4)
    weights = mp.load("model.mpz")            # dict of name -> numpy array
    with mp.open("model.mpz") as lazy:        # decodes a tensor when asked for
        kernel = lazy["dense/kernel"]
    mp.decompress("model.mpz", "model.safetensors")
"""

__version__ = "0.1.0"

from .api import Weights, compress, decompress, inspect, load, verify  # noqa: E402
from .api import open_mpz as open  # noqa: E402,A004
from .errors import (  # noqa: E402
    ConfigError,
    FormatError,
    IntegrityError,
    MetricDropError,
    ModelpressError,
    OutputExistsError,
)
from .pipeline import Options  # noqa: E402

__all__ = ["ConfigError", "FormatError", "IntegrityError", "MetricDropError", "ModelpressError",
           "Options", "Weights", "open",
           "OutputExistsError", "__version__", "compress", "decompress", "inspect", "load",
           "verify"]
