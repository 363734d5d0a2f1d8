"""Loss-curve plots of training runs (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_loss_curve(history: Sequence[dict[str, float]], path: str | Path, title: str, keys: Sequence[str]) -> Path:
    """Save a loss curve PNG (matplotlib, Agg) of ``keys`` from ``history`` rows (each has 'step')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key in keys:
        rows = [row for row in history if key in row]
        if rows:
            ax.plot([row["step"] for row in rows], [row[key] for row in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
