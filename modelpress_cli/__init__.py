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

from .errors import (  # noqa: E402
    ConfigError,
    FormatError,
    IntegrityError,
    MetricDropError,
    ModelpressError,
    OutputExistsError,
)

_LAZY = {"Weights": "api", "compress": "api", "decompress": "api", "inspect": "api",
         "load": "api", "verify": "api", "open": "api", "Options": "pipeline"}


def __getattr__(name: str):
    """The API, imported on first use: the HDF5 reader's child process imports this package
    and must not pay for numba and the codecs it never uses."""
    if name not in _LAZY:
        raise AttributeError(f"module 'modelpress_cli' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f".{_LAZY[name]}", __name__)
    value = module.open_mpz if name == "open" else getattr(module, name)
    globals()[name] = value
    return value


__all__ = ["ConfigError", "FormatError", "IntegrityError", "MetricDropError", "ModelpressError",
           "Options", "Weights", "open",
           "OutputExistsError", "__version__", "compress", "decompress", "inspect", "load",
           "verify"]
