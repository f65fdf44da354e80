"""Train the character-level transformer LM sample model; save it as .h5, .safetensors and .npz.

A small GPT-style network gives modelpress the tensors of a language model to compress
(fused attention projections, LayerNorms, positional embeddings and an output head tied to the
token embedding, stored as a duplicate pair), and eval_charlm.py checks the result. The corpus
is the documentation in `pydoc_data.topics`, which ships with Python, so nothing is downloaded;
its last TEST_CHARS characters are never trained on and are written to charlm_test.txt with
the vocabulary, so the evaluation does not depend on the Python version. torch is needed here
only. Re-running is deterministic: fixed seed, fixed step count, deterministic algorithms.

Usage: python sample_models/train_charlm.py
"""

import json
import math
import time
from pathlib import Path
from pydoc_data.topics import topics

import h5py
import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
# Newline plus printable ASCII; the few other characters (curly quotes, dashes) are dropped.
VOCAB = "\n" + "".join(chr(code) for code in range(32, 127))
TEST_CHARS = 8000
CONFIG = {
    "vocab_size": len(VOCAB),
    "d_model": 128,
    "n_layers": 2,
    "n_heads": 4,
    "context": 64,
    "mlp_hidden": 512,
    "activation": "gelu_tanh",
    "layer_norm_eps": 1e-5,
    "norm": "pre-LayerNorm",
    "tied": "head.weight equals tok_emb.weight",
}
STEPS = 1500
BATCH = 32
PEAK_LR = 3e-3
WARMUP = 100


class Attention(nn.Module):
    """Causal multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the earlier positions of each (batch, time, d_model) sequence."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    """Position-wise feed-forward layer: fc1, tanh-approximated GELU, fc2."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform each position independently."""
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self) -> None:
        super().__init__()
        d_model, eps = CONFIG["d_model"], CONFIG["layer_norm_eps"]
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = Attention(d_model, CONFIG["n_heads"])
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, CONFIG["mlp_hidden"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply attention then the MLP, each as a residual update."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    """GPT-style character model; the output head shares the token embedding matrix."""

    def __init__(self) -> None:
        super().__init__()
        d_model = CONFIG["d_model"]
        self.tok_emb = nn.Embedding(CONFIG["vocab_size"], d_model)
        self.pos_emb = nn.Embedding(CONFIG["context"], d_model)
        self.blocks = nn.ModuleList(Block() for _ in range(CONFIG["n_layers"]))
        self.ln_f = nn.LayerNorm(d_model, eps=CONFIG["layer_norm_eps"])
        self.head = nn.Linear(d_model, CONFIG["vocab_size"], bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        self.head.weight = self.tok_emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map (batch, time) token ids to (batch, time, vocab) next-character logits."""
        x = self.tok_emb(tokens) + self.pos_emb.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def corpus() -> str:
    """Join the pydoc topics in sorted key order, keeping only characters of VOCAB."""
    allowed = set(VOCAB)
    text = "\n\n".join(topics[key] for key in sorted(topics))
    return "".join(ch for ch in text if ch in allowed)


def learning_rate(step: int) -> float:
    """Linear warm-up to PEAK_LR, then cosine decay to a tenth of it."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return PEAK_LR * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def train(tokens: torch.Tensor) -> CharLM:
    """Fit the model with AdamW on random windows of the training tokens."""
    model = CharLM()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=PEAK_LR,
        betas=(0.9, 0.99),
    )
    context = CONFIG["context"]
    sampler = torch.Generator().manual_seed(0)
    offsets = torch.arange(context + 1)
    for step in range(STEPS):
        starts = torch.randint(len(tokens) - context, (BATCH,), generator=sampler)
        window = tokens[starts[:, None] + offsets]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        logits = model(window[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == STEPS - 1:
            print(f"step {step:5d}  train loss {loss.item():.3f}", flush=True)
    return model.eval()


@torch.no_grad()
def perplexity(model: CharLM, tokens: torch.Tensor) -> float:
    """Held-out perplexity over non-overlapping context-length windows, as eval_charlm.py does."""
    context = CONFIG["context"]
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, context):
        window = tokens[start : start + context + 1][None]
        logits = model(window[:, :-1]).double()
        total += nn.functional.cross_entropy(
            logits.flatten(0, 1), window[:, 1:].flatten(), reduction="sum"
        ).item()
        count += window.shape[1] - 1
    return math.exp(total / count)


def save(model: CharLM) -> None:
    """Write charlm.{npz,safetensors,h5}; the h5 uses "/" paths and carries CONFIG as JSON."""
    tensors = {
        name: tensor.detach().numpy().astype(np.float32)  # astype copies: tied pair stays two
        for name, tensor in model.state_dict(keep_vars=True).items()
    }
    config = json.dumps(CONFIG)
    np.savez(HERE / "charlm.npz", **tensors)
    save_file(
        tensors,
        str(HERE / "charlm.safetensors"),
        metadata={"format": "np", "source": "train_charlm.py", "config": config},
    )
    with h5py.File(HERE / "charlm.h5", "w") as f:
        f.attrs["config"] = config
        f.attrs["modelpress_sample"] = (
            "character-level GPT trained with PyTorch; see train_charlm.py"
        )
        for name, array in tensors.items():
            f.create_dataset(name.replace(".", "/"), data=array)


def main() -> None:
    """Split the corpus, write the test text and vocabulary, train, save, report perplexity."""
    torch.manual_seed(0)
    # One thread: on 2 cores a second OpenMP thread stalls whenever anything else runs (7x
    # slower per step, measured), and the results then do not depend on the core count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    text = corpus()
    train_text, test_text = text[:-TEST_CHARS], text[-TEST_CHARS:]
    (HERE / "charlm_vocab.json").write_text(json.dumps({"chars": list(VOCAB)}) + "\n")
    with open(HERE / "charlm_test.txt", "w", encoding="ascii", newline="") as f:
        f.write(test_text)

    index = {ch: i for i, ch in enumerate(VOCAB)}
    start = time.perf_counter()
    model = train(torch.tensor([index[ch] for ch in train_text]))
    seconds = time.perf_counter() - start
    save(model)
    test_ppl = perplexity(model, torch.tensor([index[ch] for ch in test_text]))
    print(f"trained {STEPS} steps in {seconds:.0f} s on {len(train_text)} characters")
    print(f"held-out perplexity: {test_ppl:.3f}")


if __name__ == "__main__":
    main()
