"""Figures of an evaluation (matplotlib, Agg): ROC per attack family, TPR vs attack strength, the summary table.

    >>> from guard.eval.plots import write_plots
    >>> write_plots(Path("eval-soft"), json.loads(Path("eval-soft/summary.json").read_text()))
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .attacks import ATTACKS, FAMILIES, param_label
from .metrics import roc_curve

__all__ = ["write_plots", "roc_figure", "strength_figure", "table_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            s = -(r["log10_p"] if r.get("log10_p") is not None else 0.0)
            (pos if r["population"] == "watermarked" else neg).append(s)
    return np.array(pos), np.array(neg)


def _num(row: dict, key: str) -> float:
    """A metric as a float for plotting: NaN when absent or None (not computable)."""
    v = row.get(key)
    return float("nan") if v is None else float(v)


def roc_figure(out: Path, summary: dict, path: Path) -> Path:
    """One panel per attack family: ROC (log FPR) of each attack at its summary strength (all strengths when
    the attack has no summary point), from the corrected p-values of watermarked vs clean images."""
    plt = _plt()
    rows = summary["attacks"]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in rows)]
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 4), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        for r in rows:
            if r["family"] != fam or not (r["summary_point"] or ATTACKS[r["attack"]].summary is None):
                continue
            res = out / f"{r['attack']}__{param_label(r['param'])}" / "results.jsonl"
            if not res.exists():
                continue
            pos, neg = _scores(res)
            if len(pos) == 0 or len(neg) == 0:
                continue
            fpr, tpr, _ = roc_curve(pos, neg)
            floor = 0.5 / len(neg)
            ax.step(np.maximum(fpr, floor), tpr, where="post",
                    label=f"{r['attack']} {param_label(r['param'])} (AUC {_num(r, 'auc'):.3f})")
        ax.set_xscale("log")
        ax.set_xlim(0.5 / max(1, max(r["n_clean"] for r in rows)), 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("FPR (clean images, same attack)")
        ax.set_ylabel("TPR")
        ax.set_title(fam)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("ROC per attack family (score = -log10 corrected p)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def strength_figure(summary: dict, path: Path, alpha: float = 1e-4) -> Path:
    """TPR vs strength for every attack with more than one strength: TPR@1%FPR (empirical) and TPR at alpha."""
    plt = _plt()
    rows = summary["attacks"]
    names = [n for n in dict.fromkeys(r["attack"] for r in rows) if sum(r["attack"] == n for r in rows) > 1]
    if not names:
        names = list(dict.fromkeys(r["attack"] for r in rows))
    cols = min(4, len(names))
    nrows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    key_a = f"tpr_at_alpha_{alpha:g}"
    for ax, name in zip(axes.flat, names):
        rs = sorted((r for r in rows if r["attack"] == name), key=lambda r: r["param"])
        xs = [r["param"] for r in rs]
        ax.plot(xs, [_num(r, "tpr_at_fpr_0.01") for r in rs], "o-", label="TPR@1%FPR (empirical)")
        ax.plot(xs, [_num(r, key_a) for r in rs], "s--", label=f"TPR at alpha={alpha:g}")
        ax.plot(xs, [_num(r, "token_match_wm") for r in rs], "^:", color="gray", label="token match")
        ax.set_title(f"{name} ({ATTACKS[name].param_name})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table_figure(summary: dict, path: Path) -> Path:
    """The DESIGN §10 summary table as a PNG."""
    plt = _plt()
    table = summary["table"]
    cols = [("row", "attack"), ("tpr_at_fpr_0.01", "TPR@1%FPR"), ("tpr_at_fpr_0.001", "TPR@0.1%FPR"),
            ("tpr_at_alpha_0.01", "TPR a=1e-2"), ("tpr_at_alpha_0.0001", "TPR a=1e-4"),
            ("tpr_at_alpha_1e-06", "TPR a=1e-6"), ("auc", "AUC"), ("token_match_generated_wm", "token match (gen.)"),
            ("target", "target")]
    cells = []
    for r in table:
        line = []
        for k, _ in cols:
            v = r.get(k)
            if k == "target":
                line.append("" if not v else f"{v['value']:g} {'met' if v['met'] else 'NOT met'}")
            elif isinstance(v, float):
                line.append(f"{v:.3f}")
            else:
                line.append("" if v is None else str(v))
        cells.append(line)
    cfg = summary.get("config", {})
    ident = cfg.get("identity", {})
    title = (f"mode {ident.get('mode')}" + (f" delta={ident.get('delta')}" if ident.get("delta") else "") +
             f", gamma={cfg.get('gamma')}, K={cfg.get('n_lists')}, n={ident.get('n')} per population, "
             f"test {ident.get('test')}{', --search' if ident.get('search') else ''}")
    fig, ax = plt.subplots(figsize=(11, 0.32 * (len(cells) + 2)))
    ax.axis("off")
    t = ax.table(cellText=cells or [[""] * len(cols)], colLabels=[c for _, c in cols], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width(list(range(len(cols))))
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(out: Path, summary: dict) -> list[Path]:
    """roc.png, tpr_vs_strength.png and summary_table.png in `out`."""
    out = Path(out)
    if not summary.get("attacks"):
        return []
    return [roc_figure(out, summary, out / "roc.png"), strength_figure(summary, out / "tpr_vs_strength.png"),
            table_figure(summary, out / "summary_table.png")]
