"""Train the digits CNN sample model and save it as .h5, .safetensors and .npz.

A convolutional counterpart to the digits MLP: 4-D conv kernels in Keras HWIO layout give
modelpress tensors of another shape to compress, and eval_digits_cnn.py checks the result.
Uses the same test split (digits_test.npz) as train_digits_mlp.py. torch and scikit-learn are
needed here only, never by the evaluation. Re-running is deterministic: fixed split, fixed seed,
one thread and deterministic torch algorithms.

Usage: python sample_models/train_digits_cnn.py
"""

import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
EPOCHS = 60
BATCH = 32
# (Keras layer name, Keras class, config extras); only Conv2D and Dense layers carry weights.
LAYERS = [
    ("conv1", "Conv2D", {"filters": 16}),
    ("conv2", "Conv2D", {"filters": 32}),
    ("max_pooling2d", "MaxPooling2D", {}),
    ("conv3", "Conv2D", {"filters": 32}),
    ("max_pooling2d_1", "MaxPooling2D", {}),
    ("flatten", "Flatten", {}),
    ("dense", "Dense", {"units": 10}),
]


class DigitsCNN(nn.Module):
    """conv(1→16) conv(16→32) pool conv(32→32) pool dense(128→10), ReLU, 'same' padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.dense = nn.Linear(2 * 2 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, 1, 8, 8) images to (N, 10) logits."""
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv3(x)), 2)
        # Flatten in (height, width, channel) order, as Keras' Flatten does on NHWC tensors.
        return self.dense(x.permute(0, 2, 3, 1).flatten(1))


def images(x: np.ndarray) -> torch.Tensor:
    """Turn (N, 64) pixel rows into an (N, 1, 8, 8) tensor."""
    return torch.from_numpy(x).reshape(-1, 1, 8, 8)


def train() -> tuple[DigitsCNN, np.ndarray, np.ndarray]:
    """Fit the CNN with Adam on the MLP's stratified 75/25 split; return it and the test set."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, targets = images(x_train), torch.from_numpy(y_train)
    order = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(targets), generator=order).split(BATCH):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
    return model.eval(), x_test, y_test


def keras_tensors(model: DigitsCNN) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return {layer: (kernel, bias)} in Keras layouts: conv HWIO, dense (in, out), float32."""
    out = {}
    for name in ("conv1", "conv2", "conv3", "dense"):
        layer = getattr(model, name)
        weight = layer.weight.detach()
        kernel = weight.permute(2, 3, 1, 0) if weight.ndim == 4 else weight.T
        out[name] = (
            np.ascontiguousarray(kernel.numpy(), dtype=np.float32),
            layer.bias.detach().numpy().astype(np.float32),
        )
    return out


def model_config() -> str:
    """Describe the network as a Keras-like Sequential config (JSON), as Keras 2 files do."""
    configs = []
    for name, class_name, extras in LAYERS:
        config = {"name": name, "dtype": "float32", **extras}
        if class_name == "Conv2D":
            config |= {"kernel_size": [3, 3], "padding": "same", "activation": "relu"}
            config |= {"data_format": "channels_last", "use_bias": True}
        elif class_name == "MaxPooling2D":
            config |= {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid"}
        elif class_name == "Dense":
            config |= {"activation": "softmax", "use_bias": True}
        if not configs:
            config["batch_input_shape"] = [None, 8, 8, 1]
        configs.append({"class_name": class_name, "config": config})
    return json.dumps(
        {"class_name": "Sequential", "config": {"name": "digits_cnn", "layers": configs}}
    )


def save_h5(path: Path, tensors: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write the Keras 2 HDF5 layout; weightless layers get empty groups, as in Keras files."""
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "numpy"
        f.attrs["modelpress_sample"] = "digits CNN trained with PyTorch; see train_digits_cnn.py"
        f.attrs["model_config"] = model_config()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = np.array([name.encode() for name, _, _ in LAYERS])
        for name, _, _ in LAYERS:
            group = weights.create_group(name)
            if name not in tensors:
                group.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kernel, bias = tensors[name]
            group.attrs["weight_names"] = np.array(
                [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            )
            kernel_ds = group.create_dataset(f"{name}/kernel:0", data=kernel)
            kernel_ds.attrs["role"] = "kernel"
            group.create_dataset(f"{name}/bias:0", data=bias)


def main() -> None:
    """Train, then write the three weight files next to this script (digits_test.npz is reused)."""
    torch.manual_seed(0)
    # One thread: the tensors are so small that a second thread only adds sync overhead.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model, x_test, y_test = train()
    seconds = time.perf_counter() - start
    with np.load(HERE / "digits_test.npz", allow_pickle=False) as shipped:
        if not np.array_equal(shipped["x_test"], x_test):
            raise SystemExit("train_digits_cnn: error: split differs from digits_test.npz")

    tensors = keras_tensors(model)
    flat = {}
    for name, (kernel, bias) in tensors.items():
        flat[f"{name}.kernel"] = kernel
        flat[f"{name}.bias"] = bias
    save_h5(HERE / "digits_cnn.h5", tensors)
    save_file(
        flat,
        str(HERE / "digits_cnn.safetensors"),
        metadata={"format": "np", "source": "train_digits_cnn.py"},
    )
    np.savez(HERE / "digits_cnn.npz", **flat)

    with torch.no_grad():
        predicted = model(images(x_test)).argmax(1).numpy()
    accuracy = 100.0 * float(np.mean(predicted == y_test))
    print(f"trained {EPOCHS} epochs in {seconds:.1f} s; test accuracy: {accuracy:.2f}")


if __name__ == "__main__":
    main()
