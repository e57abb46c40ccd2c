"""Write an evaluation: per-case CSV, JSON summary, a Markdown report a person can act on (method table
laid out like the papers', the cases worst first, statistics with intervals, an out-of-distribution
section, embedded figures, every "n/a" explained) and the figures. One row per method (prediction folder).

The report folder is published like a segmentation run (io.publish): locked, staged in full and swapped
in by one directory rename. ``report_manifest.json`` lists every file the report wrote; an existing
``--out`` is only replaced when it is empty or holds nothing but the files of an earlier report listed
there (stale files of that report are gone after the swap); anything else is refused (exit 5).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .. import __version__  # noqa: E402
from ..inference.scores import SUBJECT_SCORES  # noqa: E402
from ..io.images import write_json  # noqa: E402
from ..io.publish import OutputFolder, listed_files  # noqa: E402
from .decisions import FAILURE_DICE  # noqa: E402

REPORT_MANIFEST = "report_manifest.json"

TABLE = [("Dice", "dice_mean", "{:.3f}"), ("HD95 mm", "hd95_mm_mean", "{:.1f}"),
         ("ECE % (fg)", "ece_mean_volume", "{:.2%}"), ("ECE % pooled (fg)", "ece_pooled_volume", "{:.2%}"),
         ("ECE % box (fg)", "ece_mean_box", "{:.2%}"), ("ECE % (top label)", "ece_mean_toplabel_volume", "{:.2%}"),
         ("ECE % box (top label)", "ece_mean_toplabel_box", "{:.2%}"),
         ("NLL box (top label)", "nll_mean_toplabel_box", "{:.3f}"),
         ("Brier box (top label)", "brier_mean_toplabel_box", "{:.4f}"), ("U-E Dice", "ue_dice_best", "{:.3f}"),
         ("U-E tau", "ue_best_threshold", "{:.2f}"), ("BnF", "bnf_fraction", "{:.0%}"),
         ("BnF tau", "bnf_best_threshold", "{:.2f}"),
         ("under-conf.", "underconfident_fraction", "{:.0%}"),
         ("over-conf.", "overconfident_fraction", "{:.0%}")]
CASE_TABLE = [("Dice", "dice", "{:.3f}"), ("HD95 mm", "hd95_mm", "{:.1f}"), ("ECE % (fg)", "ece_volume", "{:.2%}"),
              ("ECE % (top label)", "ece_toplabel_volume", "{:.2%}"), ("reference mL", "reference_ml", "{:.1f}"),
              ("predicted mL", "predicted_ml", "{:.1f}"), *((s, s, "{:.4f}") for s in SUBJECT_SCORES)]
NA_REASONS = {
    "hd95": "HD95 is undefined when exactly one of prediction and reference is empty",
    "score": "the subject score is undefined: one sample only (softmax has no spread: cv, dpw, diversity), an "
             "empty segment, or no scores.json in the case folder",
    "correlation": "a correlation needs at least 3 cases with both values and a score that is not constant",
    "interval": "no bootstrap interval below 5 cases (too few distinct resamples)",
    "auroc": "AUROC needs at least one out-of-distribution and one in-distribution case with the score",
    "failure_auroc": "the failure AUROC needs at least one case that fails (Dice below the failure threshold) and "
                     "one that does not",
    "table": "the value needs data this run does not have (e.g. no probability or entropy maps, or one method only "
             "for the calibration split)",
}
LINE_STYLES = ("-", "--", ":", "-.")


class NotAvailable:
    """Collects why values are "n/a", numbered in order of first use, for the report's explanations."""

    def __init__(self):
        self.used: list[str] = []

    def __call__(self, fmt: str, value, reason: str = "table") -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if reason not in self.used:
                self.used.append(reason)
            return f"n/a ({self.used.index(reason) + 1})"
        return fmt.format(value)

    def interval(self, values, fmt: str = "{:.2f}") -> str:
        if values is None or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            return self("", None, "interval")
        return f"[{fmt.format(values[0])}, {fmt.format(values[1])}]"

    def explanations(self) -> list[str]:
        return [f"({i}) {NA_REASONS[r]}" for i, r in enumerate(self.used, start=1)]


def _fmt(fmt: str, value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _per_case_table(summaries: dict[str, dict], label: str, na: NotAvailable) -> list[str]:
    """One row per method and case, the worst Dice first."""
    lines = ["| method | case | " + " | ".join(t[0] for t in CASE_TABLE) + " |", "|---|---|" + "---|" * len(CASE_TABLE)]
    entries = []
    for method, s in summaries.items():
        per_case = s["classes"].get(label, {}).get("per_case")
        if per_case:
            for i, case in enumerate(per_case["case"]):
                entries.append((per_case["dice"][i], method, case, {k: per_case[k][i] for _, k, _ in CASE_TABLE}))
    for _, method, case, values in sorted(entries, key=lambda e: (e[0], e[1], e[2])):
        cells = [na(fmt, values[key], "hd95" if key == "hd95_mm" else "score" if key in SUBJECT_SCORES else "table")
                 for _, key, fmt in CASE_TABLE]
        lines.append(f"| {method} | {case} | " + " | ".join(cells) + " |")
    return lines


def _failure_section(summaries: dict[str, dict], label: str, na: NotAvailable) -> list[str]:
    """Failure detection per score (AURC, E-AURC, AUROC) and, for calibrated runs, the realised missed-error
    fraction at λ̂ and the predicted-Dice intervals' coverage."""
    lines = ["### Failure detection and calibrated decisions", "",
             f"Risk = 1 - Dice, cases accepted from the least uncertain; failure = Dice < {FAILURE_DICE} (convention "
             "failure_detection).", "",
             "| method | score | n | AURC | E-AURC | oracle AURC | random AURC | failure AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in summaries.items():
        block = s["classes"].get(label, {})
        for score, d in block.get("failure_detection", {}).items():
            if d is None:
                lines.append(f"| {method} | {score} | {block['cases']} | {na('{}', None, 'score')} | | | | |")
                continue
            lines.append(f"| {method} | {score} | {d['n']} | {na('{:.4f}', d['aurc'])} | {na('{:.4f}', d['e_aurc'])} | "
                         f"{na('{:.4f}', d['oracle_aurc'])} | {na('{:.4f}', d['random_aurc'])} | "
                         f"{na('{:.3f}', d['failure_auroc'], 'failure_auroc')} |")
        missed, coverage = block.get("missed_error_fraction"), block.get("predicted_dice_coverage")
        if missed:
            lines += ["", f"{method}: realised missed-error fraction at the run's threshold λ̂, mean over "
                          f"{missed['n']} case(s): {missed['mean']:.4f} (α = {na('{:g}', missed['alpha'])}; the "
                          "guarantee bounds its expectation over cases, not each case)."]
        if coverage:
            lines += ["", f"{method}: predicted-Dice intervals holding the actual Dice: {coverage['held']} of "
                          f"{coverage['n']} ({coverage['fraction']:.0%}; nominal coverage "
                          f"{na('{:g}', coverage['nominal'])})."]
    return lines


def _ood_section(summaries: dict[str, dict], label: str, na: NotAvailable) -> list[str]:
    lines: list[str] = []
    for method, s in summaries.items():
        ood = s["classes"].get(label, {}).get("ood")
        if not ood:
            continue
        per_case = s["classes"][label]["per_case"]
        lines += [f"### Out-of-distribution cases ({method}, {len(ood['cases'])} case(s), no reference used)", "",
                  "| case | " + " | ".join(SUBJECT_SCORES) + " |", "|---|" + "---|" * len(SUBJECT_SCORES)]
        for i, case in enumerate(ood["cases"]):
            lines.append(f"| {case} | " + " | ".join(na("{:.4f}", ood["scores"][k][i], "score")
                                                     for k in SUBJECT_SCORES) + " |")
        ranges = []
        for k in SUBJECT_SCORES:
            values = [v for v in per_case[k] if v is not None and not math.isnan(v)]
            ranges.append(f"{min(values):.4f} - {max(values):.4f}" if values else na("", None, "score"))
        lines += ["| in-distribution range | " + " | ".join(ranges) + " |", "",
                  "| score | AUROC (OOD vs in-distribution) | 95 % interval | permutation p | n OOD / in |",
                  "|---|---|---|---|---|"]
        for k, a in ood["auroc"].items():
            lines.append(f"| {k} | {na('{:.3f}', a['auroc'], 'auroc')} | {na.interval(a.get('auroc_ci95'))} | "
                         f"{na('{:.3g}', a['auroc_p'], 'auroc')} | {a['n_ood']} / {a['n_in_distribution']} |")
        lines.append("")
    return lines


def markdown(summaries: dict[str, dict], figures: dict[str, list[str]] | None = None) -> str:
    """The report: per class a method table, the cases worst first, score-quality statistics, the OOD
    section, the figures; then notes, conventions, papers and what each "n/a" means."""
    labels = sorted({label for s in summaries.values() for label in s["classes"]})
    na = NotAvailable()
    lines = ["# Evaluation report", ""]
    notes = [n for s in summaries.values() for n in s.get("notes", [])]
    if notes:
        lines += ["**Cases left out or incomplete:**", ""] + [f"- {n}" for n in notes] + [""]
    for label in labels:
        lines += [f"## {label}", "", "| method | cases | " + " | ".join(t[0] for t in TABLE) + " |",
                  "|---|---|" + "---|" * len(TABLE)]
        for method, s in summaries.items():
            block = s["classes"].get(label)
            if block:
                cells = [na(fmt, block.get(key)) for _, key, fmt in TABLE]
                lines.append(f"| {method} | {block['cases']} | " + " | ".join(cells) + " |")
        split = next((s["classes"][label].get("calibration_split") for s in summaries.values()
                      if label in s["classes"]), None)
        if split:
            lines += ["", f"Subjects, errors averaged over the {len(summaries)} method(s) (Jungo and Reyes 2019): "
                          f"{split['underconfident']:.0%} under-confident, {split['overconfident']:.0%} "
                          f"over-confident, {split['calibrated']:.0%} well calibrated (tolerance "
                          f"{split['tolerance']:.4f})."]
        lines += ["", "### Cases, worst Dice first", ""] + _per_case_table(summaries, label, na)
        lines += ["", "### Subject scores against Dice", "",
                  "Spearman rho with Dice (Hoebel et al. 2019), Pearson r with logit Dice (Mehrtash et al. 2020); "
                  "permutation p-values, 95 % bootstrap intervals; in-distribution cases only.", "",
                  "| method | score | n | Spearman | 95 % interval | p | Pearson logit | 95 % interval | p |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, s in summaries.items():
            for score, c in s["classes"].get(label, {}).get("score_vs_dice", {}).items():
                lines.append(f"| {method} | {score} | {c['n']} | {na('{:.3f}', c.get('spearman'), 'correlation')} | "
                             f"{na.interval(c.get('spearman_ci95'))} | "
                             f"{na('{:.3g}', c.get('spearman_p'), 'correlation')} | "
                             f"{na('{:.3f}', c.get('pearson_logit'), 'correlation')} | "
                             f"{na.interval(c.get('pearson_logit_ci95'))} | "
                             f"{na('{:.3g}', c.get('pearson_logit_p'), 'correlation')} |")
        for method, s in summaries.items():
            block = s["classes"].get(label, {})
            if "annotator_disagreement_mean" in block:
                rho = ", ".join(f"{k} {na('{:.3f}', v.get('spearman'), 'correlation')}"
                                for k, v in block["scores_vs_disagreement"].items())
                lines += ["", f"Several annotators ({method}): GED² {na('{:.4f}', block['ged2_mean'])}, "
                              "annotator disagreement (1 - IoU) "
                              f"{na('{:.4f}', block['annotator_disagreement_mean'])}, "
                              f"voxel r(entropy, annotator vote entropy) "
                              f"{na('{:.3f}', block['entropy_vs_vote_entropy_r_mean'], 'correlation')}; "
                              f"Spearman of scores with disagreement: {rho}"]
        lines += [""] + _failure_section(summaries, label, na)
        lines += [""] + _ood_section(summaries, label, na)
        for name in (figures or {}).get(label, []):
            lines += [f"![{name[:-4].replace('_', ' ')}]({name})", ""]
    conventions = next(iter(summaries.values()))["conventions"]
    papers = next(iter(summaries.values())).get("papers", {})
    lines += ["## Conventions", ""] + [f"- **{k}**: {v}" for k, v in conventions.items()] + [""]
    if papers:
        lines += ["## Papers", ""] + [f"- {v}" for v in papers.values()] + [""]
    if na.used:
        lines += ['## What "n/a" means', ""] + [f"- {e}" for e in na.explanations()] + [""]
    return "\n".join(lines)


def _style(index: int, total: int) -> dict:
    """Colour by index; beyond 10 curves the line style changes too, so every curve stays distinct."""
    return {"color": f"C{index % 10}", "linestyle": LINE_STYLES[(index // 10) % len(LINE_STYLES)] if total > 10
            else "-"}


def file_stems(labels) -> dict[str, str]:
    """A distinct, file-name-safe stem per class name (names come from manifests and --labels: untrusted,
    never a path)."""
    stems: dict[str, str] = {}
    for label in sorted(labels):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._-")[:60] or "class"
        while stem in stems.values():
            stem += "_"
        stems[label] = stem
    return stems


def _figures(summaries: dict[str, dict], folder: Path) -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    stems = file_stems({label for s in summaries.values() for label in s["classes"]})
    for label, stem in stems.items():
        fig, (rel, top, ref, thr) = plt.subplots(1, 4, figsize=(20, 4.8))
        for ax in (rel, top):
            ax.plot([0, 1], [0, 1], "k:", lw=1)
        curves = [(method, m) for method, s in summaries.items() if label in s["classes"]
                  for m in s["classes"][label]["referral_dice_mean"]]
        for i, (method, s) in enumerate((m, s) for m, s in summaries.items() if label in s["classes"]):
            block = s["classes"][label]
            style = _style(i, len(summaries))
            r = block["reliability_volume"]
            rel.plot(r["confidence"], r["accuracy"], marker="o", label=method, **style)
            if "reliability_toplabel_volume" in block:
                r = block["reliability_toplabel_volume"]
                top.plot(r["confidence"], r["accuracy"], marker="o", label=method, **style)
        for i, (method, m) in enumerate(curves):
            block = summaries[method]["classes"][label]
            style = _style(i, len(curves))
            ref.plot([100 * f for f in block["referral_fractions"]], block["referral_dice_mean"][m],
                     label=f"{method}: {m}", **style)
            if m in block.get("referral_threshold", {}):
                t = block["referral_threshold"][m]
                x, y = np.array(t["mean_percent_referred"]), np.array(t["mean_dice"])
                keep = x <= 100 * block["referral_fractions"][-1]
                thr.plot(x[keep], y[keep], label=f"{method}: {m}", **style)
        rel.set(xlabel="mean foreground probability (bin)", ylabel="fraction foreground",
                title=f"Reliability, foreground, pooled ({label})")
        top.set(xlabel="top-label confidence (bin)", ylabel="accuracy", title="Reliability, top label, pooled")
        ref.set(xlabel="% voxels referred in every case", ylabel="mean Dice", title="Referral, fixed fraction")
        thr.set(xlabel="mean % voxels referred (one threshold)", ylabel="mean Dice",
                title="Referral by threshold (Sander et al. 2019)")
        name = _save_panel(fig, (rel, top, ref, thr), f"Calibration and simulated referral ({label})",
                           folder / f"figures_{stem}.png")
        names[label] = [name, _uncertainty_figure(summaries, label, folder / f"uncertainty_by_outcome_{stem}.png"),
                        _scores_figure(summaries, label, folder / f"scores_vs_dice_{stem}.png")]
    return names


def _uncertainty_figure(summaries: dict[str, dict], label: str, path: Path) -> str:
    """Distributions of the normalized entropy in TP / FP / FN / TN voxels (dilated box), per method."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharex=True)
    methods = [m for m, s in summaries.items() if s["classes"].get(label, {}).get("entropy_by_confusion_box")]
    for i, method in enumerate(methods):
        hist = summaries[method]["classes"][label]["entropy_by_confusion_box"]
        edges = np.array(hist["edges"])
        for ax, group in zip(axes, ("TP", "FP", "FN", "TN"), strict=True):
            counts = np.array(hist[group], dtype=float)
            density = counts / counts.sum() if counts.sum() else counts
            ax.stairs(density, edges, label=f"{method} (n={int(counts.sum())})", **_style(i, len(methods)))
            ax.set(title=f"{group} voxels", xlabel="normalized entropy")
    axes[0].set_ylabel("fraction of voxels")
    return _save_panel(fig, axes, f"Uncertainty by outcome inside the dilated reference box ({label})",
                       path)


def _scores_figure(summaries: dict[str, dict], label: str, path: Path) -> str:
    """Each subject score against Dice, one labelled point per in-distribution case, Spearman's rho in the legend."""
    fig, axes = plt.subplots(1, len(SUBJECT_SCORES), figsize=(3.6 * len(SUBJECT_SCORES), 3.8), sharey=True)
    methods = [m for m, s in summaries.items() if label in s["classes"]]
    for i, method in enumerate(methods):
        block = summaries[method]["classes"][label]
        for ax, score in zip(axes, SUBJECT_SCORES, strict=True):
            rho = block["score_vs_dice"].get(score, {}).get("spearman")
            x, y = block["per_case"][score], block["per_case"]["dice"]
            ax.plot(x, y, "o", ms=4, color=_style(i, len(methods))["color"],
                    label=f"{method}: rho {_fmt('{:.2f}', rho)}")
            for case, xi, yi in zip(block["per_case"]["case"], x, y, strict=True):
                if xi is not None and np.isfinite(xi):
                    ax.annotate(case, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
            ax.set(xlabel=score)
    axes[0].set_ylabel("Dice")
    return _save_panel(fig, axes, f"Subject-level scores against Dice, in-distribution cases ({label})",
                       path)


def _save_panel(fig, axes, title: str, path: Path) -> str:
    """Legends, title, layout; write the PNG and return its file name."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
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


def report_files(folder: Path) -> set[str] | None:
    """The files an earlier report wrote in ``folder`` (listed in its report_manifest.json), or None."""
    return listed_files(folder, REPORT_MANIFEST)


def report_folder(out_dir: str | Path) -> OutputFolder:
    """The locked, checked report folder (use as a context manager; take it before the long part)."""
    return OutputFolder(out_dir, report_files)


def write_report(summaries: dict[str, dict], rows: list[dict], out_dir: str | Path | OutputFolder) -> Path:
    """Write cases.csv, summary.json, report.md, the figures and report_manifest.json, published in one
    atomic step (see the module docstring); return the report path. OutputError (exit 5) when ``out_dir``
    holds files no earlier report wrote."""
    if not isinstance(out_dir, OutputFolder):
        with report_folder(out_dir) as folder:
            return write_report(summaries, rows, folder)
    with out_dir.staged() as stage:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(stage / "cases.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        write_json(jsonable(summaries), stage / "summary.json")
        figures = _figures(summaries, stage)
        (stage / "report.md").write_text(markdown(summaries, figures), encoding="utf-8")
        outputs = [{"file": "report.md", "meaning": "The report (Markdown, UTF-8), figures embedded"},
                   {"file": "cases.csv", "meaning": "One row per method, case and class"},
                   {"file": "summary.json", "meaning": "Dataset summary per method and class"},
                   *({"file": n, "meaning": f"Figure, class '{label}'"} for label, group in figures.items()
                     for n in group)]
        write_json({"format_version": 1, "tool": f"seguncertainty {__version__}", "command": "evaluate",
                    "outputs": outputs}, stage / REPORT_MANIFEST)
    return out_dir.path / "report.md"
