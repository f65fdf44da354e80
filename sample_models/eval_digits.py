"""Measure the test accuracy of digits MLP weights stored as .npz, .h5 or .safetensors.

Used to check that a compressed-then-restored model still works. It deliberately does not
import modelpress: it reads the files with the plain format libraries and finds the layers by
tensor shape, so it judges modelpress output instead of trusting modelpress code.

Usage: python sample_models/eval_digits.py WEIGHTS [--test PATH]
Prints one line, e.g. "test accuracy: 97.56"; on unusable weights prints an error to stderr
and exits 1.
"""

import argparse
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

DEFAULT_TEST = Path(__file__).resolve().parent / "digits_test.npz"


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a weights file, chosen by extension, as float32 by name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            tensors = {name: archive[name] for name in archive.files}
    elif suffix == ".h5":
        tensors = {}
        with h5py.File(path, "r") as f:

            def collect(name: str, obj: object) -> None:
                if isinstance(obj, h5py.Dataset):
                    tensors[name] = obj[()]

            f.visititems(collect)
    elif suffix == ".safetensors":
        tensors = load_file(path)
    else:
        raise ValueError(f"unsupported weights extension {suffix!r} (want .npz, .h5, .safetensors)")
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


def layer_prefix(name: str) -> str:
    """Drop the last name component ("…/kernel:0", ".bias"), leaving what identifies the layer."""
    cut = max(name.rfind("/"), name.rfind("."))
    return name[:cut] if cut >= 0 else ""


def chain_layers(
    weights: dict[str, np.ndarray], n_inputs: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Order the (kernel, bias) pairs into a chain from n_inputs features to the output.

    Kernels are the 2-D tensors and biases the 1-D ones; each next kernel must take the previous
    output width, and each bias must share its kernel's layer prefix and output width. Raises
    ValueError unless every tensor fits into exactly one unambiguous chain.
    """
    kernels = {name: t for name, t in weights.items() if t.ndim == 2}
    biases = {name: t for name, t in weights.items() if t.ndim == 1}
    others = sorted(set(weights) - set(kernels) - set(biases))
    if others:
        raise ValueError(f"tensors that are neither kernel nor bias: {', '.join(others)}")
    if not kernels:
        raise ValueError("no 2-D kernel tensors found")

    layers = []
    width = n_inputs
    while kernels:
        candidates = [name for name, k in kernels.items() if k.shape[0] == width]
        if len(candidates) != 1:
            raise ValueError(
                f"need exactly one kernel with {width} inputs, found {len(candidates)}: "
                f"{sorted(kernels)} left with shapes {[k.shape for k in kernels.values()]}"
            )
        kernel_name = candidates[0]
        kernel = kernels.pop(kernel_name)
        prefix = layer_prefix(kernel_name)
        matches = [
            name
            for name, b in biases.items()
            if layer_prefix(name) == prefix and b.shape[0] == kernel.shape[1]
        ]
        if len(matches) != 1:
            raise ValueError(
                f"need exactly one bias of length {kernel.shape[1]} with prefix {prefix!r} "
                f"for kernel {kernel_name!r}, found {len(matches)}"
            )
        layers.append((kernel, biases.pop(matches[0])))
        width = kernel.shape[1]
    if biases:
        raise ValueError(f"biases not matched to any kernel: {', '.join(sorted(biases))}")
    return layers


def accuracy(weights: dict[str, np.ndarray], test_path: str | Path = DEFAULT_TEST) -> float:
    """Return the test accuracy in percent: relu on hidden layers, argmax of the last one."""
    with np.load(test_path, allow_pickle=False) as test:
        x, y = test["x_test"].astype(np.float32), test["y_test"]
    layers = chain_layers(weights, n_inputs=x.shape[1])
    h = x
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        if i < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return 100.0 * float(np.mean(np.argmax(h, axis=1) == y))


def main() -> None:
    """Command-line entry: print the accuracy, or a one-line error and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="weights file (.npz, .h5 or .safetensors)")
    parser.add_argument("--test", default=DEFAULT_TEST, help="test set .npz (x_test, y_test)")
    args = parser.parse_args()
    try:
        acc = accuracy(load_weights(args.weights), args.test)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, SafetensorError) as exc:
        sys.exit(f"eval_digits: error: {exc}")
    print(f"test accuracy: {acc:.2f}")


if __name__ == "__main__":
    main()
