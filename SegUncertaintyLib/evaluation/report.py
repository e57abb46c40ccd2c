"""Write an evaluation: per-case CSV, JSON summary, Markdown report laid out like the papers' tables,
and reliability / referral figures. One row per method (prediction folder)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io.images import check_writable_dir, publish, staging_dir, write_json  # noqa: E402

TABLE = [("Dice", "dice_mean", "{:.3f}"), ("HD95 mm", "hd95_mm_mean", "{:.1f}"),
         ("ECE %", "ece_mean_volume", "{:.2%}"), ("ECE % pooled", "ece_pooled_volume", "{:.2%}"),
         ("ECE % box", "ece_mean_box", "{:.2%}"), ("NLL box", "nll_mean_box", "{:.3f}"),
         ("Brier box", "brier_mean_box", "{:.4f}"), ("U-E Dice", "ue_dice_best", "{:.3f}"),
         ("best tau", "ue_best_threshold", "{:.2f}"), ("BnF", "bnf_fraction", "{:.0%}"),
         ("under-conf.", "underconfident_fraction", "{:.0%}"),
         ("over-conf.", "overconfident_fraction", "{:.0%}")]


def _fmt(fmt: str, value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def markdown(summaries: dict[str, dict]) -> str:
    labels = sorted({label for s in summaries.values() for label in s["classes"]})
    lines = ["# Evaluation report", ""]
    for label in labels:
        lines += [f"## {label}", "", "| method | cases | " + " | ".join(t[0] for t in TABLE) + " |",
                  "|---|---|" + "---|" * len(TABLE)]
        for method, s in summaries.items():
            block = s["classes"].get(label)
            if block:
                cells = [_fmt(fmt, block.get(key)) for _, key, fmt in TABLE]
                lines.append(f"| {method} | {block['cases']} | " + " | ".join(cells) + " |")
        split = next((s["classes"][label].get("calibration_split") for s in summaries.values()
                      if label in s["classes"]), None)
        if split:
            lines += ["", f"Subjects, errors averaged over the {len(summaries)} method(s) (paper 001): "
                          f"{split['underconfident']:.0%} under-confident, {split['overconfident']:.0%} "
                          f"over-confident, {split['calibrated']:.0%} well calibrated (tolerance "
                          f"{split['tolerance']:.4f})."]
        lines += ["", "Subject scores against Dice (Spearman rho, Pearson r on logit Dice):", "",
                  "| method | score | n | Spearman | p | Pearson logit | p |", "|---|---|---|---|---|---|---|"]
        for method, s in summaries.items():
            for score, c in s["classes"].get(label, {}).get("score_vs_dice", {}).items():
                lines.append(f"| {method} | {score} | {c['n']} | {_fmt('{:.3f}', c.get('spearman'))} | "
                             f"{_fmt('{:.3g}', c.get('spearman_p'))} | {_fmt('{:.3f}', c.get('pearson_logit'))} "
                             f"| {_fmt('{:.3g}', c.get('pearson_logit_p'))} |")
        for method, s in summaries.items():
            block = s["classes"].get(label, {})
            if "annotator_disagreement_mean" in block:
                rho = ", ".join(f"{k} {_fmt('{:.3f}', v.get('spearman'))}"
                                for k, v in block["scores_vs_disagreement"].items())
                lines += ["", f"Several annotators ({method}): GED² {_fmt('{:.4f}', block['ged2_mean'])}, "
                              "annotator disagreement (1 - IoU) "
                              f"{_fmt('{:.4f}', block['annotator_disagreement_mean'])}, "
                              f"voxel r(entropy, annotator vote entropy) "
                              f"{_fmt('{:.3f}', block['entropy_vs_vote_entropy_r_mean'])}; "
                              f"Spearman of scores with disagreement: {rho}"]
        for method, s in summaries.items():
            auroc = s["classes"].get(label, {}).get("ood_auroc")
            if auroc:
                lines += ["", f"OOD AUROC ({method}): " + ", ".join(f"{k} {_fmt('{:.3f}', v)}"
                                                                  for k, v in auroc.items())]
        lines.append("")
    conventions = next(iter(summaries.values()))["conventions"]
    lines += ["## Conventions", ""] + [f"- **{k}**: {v}" for k, v in conventions.items()] + [""]
    return "\n".join(lines)


def _figures(summaries: dict[str, dict], folder: Path) -> list[str]:
    names = []
    for label in sorted({label for s in summaries.values() for label in s["classes"]}):
        fig, (rel, ref) = plt.subplots(1, 2, figsize=(10, 4.5))
        rel.plot([0, 1], [0, 1], "k:", lw=1)
        for method, s in summaries.items():
            block = s["classes"].get(label)
            if not block:
                continue
            r = block["reliability_volume"]
            rel.plot(r["confidence"], r["accuracy"], "o-", label=method)
            for m, dice in block["referral_dice_mean"].items():
                ref.plot([100 * f for f in block["referral_fractions"]], dice, label=f"{method}: {m}")
        rel.set(xlabel="mean foreground probability (bin)", ylabel="fraction foreground",
                title=f"Reliability, pooled ({label})")
        ref.set(xlabel="% voxels referred", ylabel="mean Dice", title=f"Simulated referral ({label})")
        rel.legend(fontsize=8)
        ref.legend(fontsize=7)
        fig.tight_layout()
        name = f"figures_{label}.png"
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        names += [name, _uncertainty_figure(summaries, label, folder), _scores_figure(summaries, label, folder)]
    return names


def _uncertainty_figure(summaries: dict[str, dict], label: str, folder: Path) -> str:
    """Distributions of the normalized entropy in TP / FP / FN / TN voxels (dilated box), per method."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharex=True)
    for method, s in summaries.items():
        hist = s["classes"].get(label, {}).get("entropy_by_confusion_box")
        if not hist:
            continue
        edges = np.array(hist["edges"])
        for ax, group in zip(axes, ("TP", "FP", "FN", "TN"), strict=True):
            counts = np.array(hist[group], dtype=float)
            density = counts / counts.sum() if counts.sum() else counts
            ax.stairs(density, edges, label=f"{method} (n={int(counts.sum())})")
            ax.set(title=f"{group} voxels", xlabel="normalized entropy")
    axes[0].set_ylabel("fraction of voxels")
    return _save_panel(fig, axes, f"Uncertainty by outcome inside the dilated reference box ({label})",
                       folder / f"uncertainty_by_outcome_{label}.png")


def _scores_figure(summaries: dict[str, dict], label: str, folder: Path) -> str:
    """Each subject score against Dice, one point per case, with Spearman's rho in the legend."""
    scores = ("cv", "dpw", "ulabelled", "segment_entropy", "diversity")
    fig, axes = plt.subplots(1, len(scores), figsize=(3.2 * len(scores), 3.4), sharey=True)
    for method, s in summaries.items():
        block = s["classes"].get(label)
        if not block:
            continue
        for ax, score in zip(axes, scores, strict=True):
            rho = block["score_vs_dice"].get(score, {}).get("spearman")
            ax.plot(block["per_case"][score], block["per_case"]["dice"], "o", ms=4,
                    label=f"{method}: rho {_fmt('{:.2f}', rho)}")
            ax.set(xlabel=score)
    axes[0].set_ylabel("Dice")
    return _save_panel(fig, axes, f"Subject-level scores against Dice ({label})",
                       folder / f"scores_vs_dice_{label}.png")


def _save_panel(fig, axes, title: str, path: Path) -> str:
    """Legends, title, layout; write the PNG and return its file name."""
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def jsonable(value):
    """NaN/inf to None and numpy scalars to Python, recursively (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_report(summaries: dict[str, dict], rows: list[dict], out_dir: str | Path) -> Path:
    """Write cases.csv, summary.json, report.md and figures atomically; return the report path."""
    out_dir = check_writable_dir(out_dir)
    with staging_dir(out_dir) as stage:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(stage / "cases.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        write_json(jsonable(summaries), stage / "summary.json")
        (stage / "report.md").write_text(markdown(summaries))
        names = ["cases.csv", "summary.json", *_figures(summaries, stage), "report.md"]
        publish(stage, out_dir, names)
    return out_dir / "report.md"
