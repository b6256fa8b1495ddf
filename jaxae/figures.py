"""Matplotlib figures of a run. Never trains; reads what train and evaluate wrote."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(l) for l in fh if l.strip()]


def loss_curve(workdir: str, out: str | None = None, pca_mse: float | None = None) -> str | None:
    """Train loss and test MSE per epoch -> WORKDIR/loss_curve.png."""
    records = read_metrics(workdir)
    if not records:
        return None
    out = out or os.path.join(workdir, "loss_curve.png")
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in records], "o-", ms=3, label="train loss (corrupted input)")
    ax.plot(epochs, [r["test_mse"] for r in records], "s-", ms=3, label="test MSE (clean input)")
    if pca_mse is not None:
        ax.axhline(pca_mse, color="gray", ls="--", lw=1, label=f"PCA baseline MSE {pca_mse:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per pixel")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"Training curve: {os.path.basename(os.path.abspath(workdir))}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
