"""Measure the held-out perplexity of character-LM weights stored as .npz, .h5 or .safetensors.

Used to check that a compressed-then-restored language model still works. It runs the GPT of
train_charlm.py in plain numpy (no torch, no modelpress), reading the files with the format
libraries, so it judges modelpress output instead of trusting modelpress code. The text is cut
into non-overlapping windows of the model's context length, evaluated as one batch.

Usage: python sample_models/eval_charlm.py WEIGHTS [--test PATH] [--vocab PATH]
Prints one line, e.g. "perplexity: 2.824" (lower is better); on unusable weights prints an
error to stderr and exits 1.
"""

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

HERE = Path(__file__).resolve().parent
DEFAULT_TEST = HERE / "charlm_test.txt"
DEFAULT_VOCAB = HERE / "charlm_vocab.json"
# Not recoverable from tensor shapes; the trained model uses 4 heads (train_charlm.py CONFIG).
N_HEADS = 4
LAYER_NORM_EPS = 1e-5


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a weights file as float32, keyed by its PyTorch name.

    .h5 files keep the tensors at "/" paths (blocks/0/attn/qkv/weight); they are normalised to
    the "." names (blocks.0.attn.qkv.weight) that the .npz and .safetensors files use.
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
                    tensors[name] = obj[()]

            f.visititems(collect)
    elif suffix == ".safetensors":
        tensors = load_file(path)
    else:
        raise ValueError(f"unsupported weights extension {suffix!r} (want .npz, .h5, .safetensors)")
    return {
        name.replace("/", "."): np.asarray(value, dtype=np.float32)
        for name, value in tensors.items()
    }


class Params:
    """Checked access to the weights: each tensor must exist and have the expected shape."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.weights = weights
        self.vocab, self.d_model = self.get("tok_emb.weight").shape
        self.context = self.get("pos_emb.weight", (None, self.d_model)).shape[0]
        blocks = {int(m[1]) for name in weights if (m := re.match(r"blocks\.(\d+)\.", name))}
        if not blocks:
            raise ValueError("no transformer block tensors (blocks.N.*) found")
        self.n_layers = max(blocks) + 1
        if self.d_model % N_HEADS:
            raise ValueError(f"d_model {self.d_model} is not divisible by {N_HEADS} heads")

    def get(self, name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
        """Return the tensor; shape entries of None match any size, a None shape any 2-D one."""
        if name not in self.weights:
            raise ValueError(f"missing tensor {name!r}")
        tensor = self.weights[name]
        want = shape if shape is not None else (None, None)
        if len(tensor.shape) != len(want) or any(
            w is not None and w != s for s, w in zip(tensor.shape, want, strict=True)
        ):
            raise ValueError(f"tensor {name!r} has shape {tensor.shape}, want {want}")
        return tensor

    def linear(self, prefix: str, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (weight.T, bias) of a torch Linear layer, ready for x @ weight.T + bias."""
        return self.get(f"{prefix}.weight", (n_out, n_in)).T, self.get(f"{prefix}.bias", (n_out,))

    def norm(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """Return (weight, bias) of a LayerNorm."""
        d = self.d_model
        return self.get(f"{prefix}.weight", (d,)), self.get(f"{prefix}.bias", (d,))


def layer_norm(x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """LayerNorm over the last axis, with torch's biased variance and epsilon."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LAYER_NORM_EPS) * weight_bias[0] + weight_bias[1]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation (torch's approximate="tanh")."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x * x * x)))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(x: np.ndarray, p: Params, prefix: str, batch: int) -> np.ndarray:
    """Causal multi-head self-attention with a fused q/k/v projection, as in train_charlm.py.

    x holds `batch` sequences as (batch * time, d_model) rows: the projections then run as
    single 2-D matrix products, which numpy does far faster than stacked 3-D ones.
    """
    n, d = x.shape
    t = n // batch
    w_qkv, b_qkv = p.linear(f"{prefix}.qkv", 3 * d, d)
    qkv = (x @ w_qkv + b_qkv).reshape(batch, t, 3, N_HEADS, d // N_HEADS)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, time, head_dim)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // N_HEADS)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    y = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(n, d)
    w_proj, b_proj = p.linear(f"{prefix}.proj", d, d)
    return y @ w_proj + b_proj


def logits(p: Params, tokens: np.ndarray) -> np.ndarray:
    """Map (batch, time) token ids to (batch, time, vocab) next-character logits."""
    batch, t = tokens.shape
    d = p.d_model
    x = (p.get("tok_emb.weight")[tokens] + p.get("pos_emb.weight")[:t]).reshape(batch * t, d)
    for i in range(p.n_layers):
        prefix = f"blocks.{i}"
        x = x + attention(layer_norm(x, p.norm(f"{prefix}.ln1")), p, f"{prefix}.attn", batch)
        w1, b1 = p.linear(f"{prefix}.mlp.fc1", p.get(f"{prefix}.mlp.fc1.weight").shape[0], d)
        w2, b2 = p.linear(f"{prefix}.mlp.fc2", d, w1.shape[1])
        x = x + gelu_tanh(layer_norm(x, p.norm(f"{prefix}.ln2")) @ w1 + b1) @ w2 + b2
    out = layer_norm(x, p.norm("ln_f")) @ p.get("head.weight", (p.vocab, d)).T
    return out.reshape(batch, t, p.vocab)


def encode(test_path: str | Path, vocab_path: str | Path) -> np.ndarray:
    """Read the test text and turn it into token ids; ValueError on a character not in vocab."""
    chars = json.loads(Path(vocab_path).read_text(encoding="utf-8"))["chars"]
    index = {ch: i for i, ch in enumerate(chars)}
    with open(test_path, encoding="utf-8", newline="") as f:
        text = f.read()
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise ValueError(f"test text has characters outside the vocabulary: {unknown!r}")
    if len(text) < 2:
        raise ValueError("test text needs at least two characters")
    return np.array([index[ch] for ch in text])


def perplexity(
    weights: dict[str, np.ndarray],
    test_path: str | Path = DEFAULT_TEST,
    vocab_path: str | Path = DEFAULT_VOCAB,
) -> float:
    """Return exp(mean next-character loss) over non-overlapping context-length windows.

    Each window predicts its characters from at most `context` preceding ones of the same
    window; full windows run as one batch, a shorter last window on its own.
    """
    p = Params(weights)
    tokens = encode(test_path, vocab_path)
    if tokens.max() >= p.vocab:
        raise ValueError(f"vocabulary has more characters than the model's {p.vocab}")
    n_full = (len(tokens) - 1) // p.context
    full = tokens[: n_full * p.context + 1]
    batches = [
        (full[:-1].reshape(n_full, p.context), full[1:].reshape(n_full, p.context)),
        (tokens[n_full * p.context : -1][None], tokens[n_full * p.context + 1 :][None]),
    ]
    total, count = 0.0, 0
    for inputs, targets in batches:
        if targets.size == 0:
            continue
        z = logits(p, inputs).astype(np.float64)
        z -= z.max(-1, keepdims=True)
        log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(log_probs, targets[..., None], -1).sum())
        count += targets.size
    return float(np.exp(total / count))


def main() -> None:
    """Command-line entry: print the perplexity, or a one-line error and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="weights file (.npz, .h5 or .safetensors)")
    parser.add_argument("--test", default=DEFAULT_TEST, help="held-out text (plain ASCII)")
    parser.add_argument("--vocab", default=DEFAULT_VOCAB, help="vocabulary JSON ({'chars': [...]})")
    args = parser.parse_args()
    try:
        ppl = perplexity(load_weights(args.weights), args.test, args.vocab)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, SafetensorError) as exc:
        sys.exit(f"eval_charlm: error: {exc}")
    print(f"perplexity: {ppl:.3f}")


if __name__ == "__main__":
    main()
