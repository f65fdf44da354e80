"""Train the digits MLP sample model and save it as .h5, .safetensors and .npz.

The files give modelpress a small but really-trained network to compress, whose quality can be
checked afterwards with eval_digits.py. scikit-learn is only needed here (dev dependency).
Re-running is deterministic: fixed split and fixed random_state.

Usage: python sample_models/train_digits_mlp.py
"""

import json
from pathlib import Path

import h5py
import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
LAYER_NAMES = ["dense", "dense_1", "dense_2"]
ACTIVATIONS = ["relu", "relu", "softmax"]


def train() -> tuple[MLPClassifier, np.ndarray, np.ndarray]:
    """Fit the MLP on a stratified 75/25 split; return it with the held-out test set."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    # Adam stops on its own tolerance after ~100 epochs; 500 is headroom, not the stop rule.
    model = MLPClassifier(
        hidden_layer_sizes=(256, 128), activation="relu", random_state=0, max_iter=500
    )
    model.fit(x_train, y_train)
    return model, x_test, y_test


def layer_tensors(model: MLPClassifier) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Return (layer name, float32 kernel of shape (in, out), float32 bias) per Dense layer."""
    return [
        (name, np.asarray(kernel, np.float32), np.asarray(bias, np.float32))
        for name, kernel, bias in zip(LAYER_NAMES, model.coefs_, model.intercepts_, strict=True)
    ]


def model_config(layers: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """Describe the network as a Keras-like Sequential config (JSON), as Keras 2 files do."""
    configs = []
    for (name, kernel, _), activation in zip(layers, ACTIVATIONS, strict=True):
        config = {
            "name": name,
            "units": int(kernel.shape[1]),
            "activation": activation,
            "use_bias": True,
            "dtype": "float32",
        }
        if not configs:
            config["batch_input_shape"] = [None, int(kernel.shape[0])]
        configs.append({"class_name": "Dense", "config": config})
    return json.dumps(
        {"class_name": "Sequential", "config": {"name": "digits_mlp", "layers": configs}}
    )


def save_h5(path: Path, layers: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Write the weights in the Keras 2 HDF5 layout (model_weights/<layer>/<layer>/kernel:0)."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "numpy"
        f.attrs["modelpress_sample"] = (
            "digits MLP trained with scikit-learn MLPClassifier; see train_digits_mlp.py"
        )
        f.attrs["model_config"] = model_config(layers)
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([name.encode() for name, _, _ in layers])
        for name, kernel, bias in layers:
            group = weights.create_group(name)
            group.attrs["weight_names"] = np.array(
                [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            )
            kernel_ds = group.create_dataset(f"{name}/kernel:0", data=kernel)
            kernel_ds.attrs["role"] = "kernel"
            group.create_dataset(f"{name}/bias:0", data=bias)


def main() -> None:
    """Train, then write the test set and the three weight files next to this script."""
    model, x_test, y_test = train()
    layers = layer_tensors(model)
    flat = {}
    for name, kernel, bias in layers:
        flat[f"{name}.kernel"] = kernel
        flat[f"{name}.bias"] = bias

    np.savez(HERE / "digits_test.npz", x_test=x_test, y_test=y_test)
    save_h5(HERE / "digits_mlp.h5", layers)
    save_file(
        flat,
        str(HERE / "digits_mlp.safetensors"),
        metadata={"format": "np", "source": "train_digits_mlp.py"},
    )
    np.savez(HERE / "digits_mlp.npz", **flat)

    accuracy = 100.0 * model.score(x_test, y_test)
    print(f"trained in {model.n_iter_} epochs; test accuracy: {accuracy:.2f}")


if __name__ == "__main__":
    main()
