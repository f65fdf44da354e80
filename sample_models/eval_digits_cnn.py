"""Measure the test accuracy of digits CNN weights stored as .npz, .h5 or .safetensors.

Used to check that a compressed-then-restored CNN still works. Like eval_digits.py it does not
import modelpress (nor torch): it reads the files with the plain format libraries and runs the
network in numpy, so it judges modelpress output instead of trusting modelpress code.

Usage: python sample_models/eval_digits_cnn.py WEIGHTS [--test PATH]
Prints one line, e.g. "test accuracy: 98.22"; on unusable weights prints an error to stderr
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
# (layer, kernel shape): conv kernels are Keras HWIO (kh, kw, in, out), dense is (in, out).
LAYERS = [
    ("conv1", (3, 3, 1, 16)),
    ("conv2", (3, 3, 16, 32)),
    ("conv3", (3, 3, 32, 32)),
    ("dense", (2 * 2 * 32, 10)),
]


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a weights file as float32, keyed "layer.param" in every format.

    The Keras 2 .h5 path "model_weights/conv1/conv1/kernel:0" becomes "conv1.kernel", the
    name the .npz and .safetensors files use directly.
    """
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
                    tensors[".".join(name.split("/")[-2:]).removesuffix(":0")] = obj[()]

            f.visititems(collect)
    elif suffix == ".safetensors":
        tensors = load_file(path)
    else:
        raise ValueError(f"unsupported weights extension {suffix!r} (want .npz, .h5, .safetensors)")
    return {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()}


def tensor(weights: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return weights[name], raising ValueError if it is missing or has another shape."""
    if name not in weights:
        raise ValueError(f"missing tensor {name!r}")
    if weights[name].shape != shape:
        raise ValueError(f"tensor {name!r} has shape {weights[name].shape}, want {shape}")
    return weights[name]


def conv_same_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 'same' convolution (cross-correlation, as Keras and torch) plus ReLU on NHWC input."""
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    patches = np.stack(
        [padded[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], axis=3
    )  # (n, h, w, kh*kw, in), patch order matching kernel.reshape(kh*kw, in, out)
    out = np.einsum("nhwpc,pco->nhwo", patches, kernel.reshape(kh * kw, *kernel.shape[2:]))
    return np.maximum(out + bias, 0.0)


def max_pool2(x: np.ndarray) -> np.ndarray:
    """2x2 max pooling with stride 2 on NHWC input (even height and width)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def accuracy(weights: dict[str, np.ndarray], test_path: str | Path = DEFAULT_TEST) -> float:
    """Return the test accuracy in percent: argmax of the logits of the conv-conv-pool net."""
    params = {
        name: (
            tensor(weights, f"{name}.kernel", shape),
            tensor(weights, f"{name}.bias", shape[-1:]),
        )
        for name, shape in LAYERS
    }
    with np.load(test_path, allow_pickle=False) as test:
        x, y = test["x_test"].astype(np.float32), test["y_test"]
    h = x.reshape(-1, 8, 8, 1)
    h = conv_same_relu(h, *params["conv1"])
    h = max_pool2(conv_same_relu(h, *params["conv2"]))
    h = max_pool2(conv_same_relu(h, *params["conv3"]))
    kernel, bias = params["dense"]
    logits = h.reshape(len(h), -1) @ kernel + bias  # (h, w, c) flatten order, as Keras
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == y))


def main() -> None:
    """Command-line entry: print the accuracy, or a one-line error and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="weights file (.npz, .h5 or .safetensors)")
    parser.add_argument("--test", default=DEFAULT_TEST, help="test set .npz (x_test, y_test)")
    args = parser.parse_args()
    try:
        acc = accuracy(load_weights(args.weights), args.test)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, SafetensorError) as exc:
        sys.exit(f"eval_digits_cnn: error: {exc}")
    print(f"test accuracy: {acc:.2f}")


if __name__ == "__main__":
    main()
