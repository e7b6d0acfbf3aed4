"""One figure per Fisher approximation from a ``kronalg-report`` run, for the docs' approximation pages.

Usage (from the repository root)::

    kronalg-report --no-progress --out kronalg-report
    python docs/approximation_figures.py kronalg-report --out docs/img --tables

For every method in the report it writes ``approx_<method>.png``: Error 1 (top row) and Error 2 (bottom row) against
the batch size, one column per studied layer of every setting, the method's mean over seeds with its min–max band,
and two references drawn in grey — K-FAC (dashed) and KPSVD, the best single Kronecker product (dotted). The pages
for K-FOC show both aggregations in one figure (``approx_kfoc.png``). ``--tables`` prints the full-batch numbers
that the pages quote.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Page name → the report methods drawn in colour on that page.
PAGES: dict[str, tuple[str, ...]] = {
    "kfac": ("kfac",),
    "tkfac": ("tkfac",),
    "kpsvd": ("kpsvd",),
    "deflation": ("deflation",),
    "lanczos": ("lanczos",),
    "kfac_corrected": ("kfac_corrected",),
    "kfoc": ("kfoc_running", "kfoc_approx"),
    "rs_kfac": ("rs_kfac",),
    "b_kfac": ("b_kfac",),
    "b_r_kfac": ("b_r_kfac",),
    "b_kfac_c": ("b_kfac_c",),
}

_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")
_REFERENCES = (("kfac", "--", "K-FAC"), ("kpsvd", ":", "KPSVD (best product)"))


def _batch_sizes(setting: dict[str, Any], labels: Sequence[str]) -> list[int]:
    """Numeric batch size of each label ('full' → the number of Fisher samples)."""
    n = setting["fisher_samples"]
    return [n if lb == "full" else min(int(lb), n) for lb in labels]


def _panels(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(setting, layer, setting record) for every studied layer, settings in report order."""
    return [(key, layer, s) for key, s in report["settings"].items() for layer in s["layers"]]


def plot_page(report: dict[str, Any], page: str, path: Path) -> Path | None:
    """Write the figure of one approximation page.

    Parameters
    ----------
    report : dict
        The parsed ``report.json`` of ``kronalg-report``.
    page : str
        A key of :data:`PAGES`.
    path : pathlib.Path
        PNG file to write.

    Returns
    -------
    pathlib.Path or None
        ``path``, or None when the report has none of the page's methods.
    """
    from matplotlib.figure import Figure

    methods = [m for m in PAGES[page] if m in report["meta"]["methods"]]
    if not methods:
        return None
    labels = report["meta"]["batch_sizes"]
    panels = _panels(report)
    fig = Figure(figsize=(2.55 * len(panels) + 0.6, 5.4), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False)
    for col, (key, layer, setting) in enumerate(panels):
        xs = _batch_sizes(setting, labels)
        summary = setting["summary"][layer]
        for row, metric in enumerate(("error1", "error2")):
            ax = axes[row, col]
            for ref, ls, name in _REFERENCES:
                if ref in summary and ref not in methods:
                    ys = [summary[ref][lb][metric]["mean"] for lb in labels]
                    ax.plot(xs, ys, ls, color="0.45", lw=1.3, label=name)
            for method, colour in zip(methods, _COLOURS):
                st = [summary[method][lb][metric] for lb in labels]
                ax.plot(xs, [s["mean"] for s in st], "-", color=colour, marker="o", ms=3, lw=1.8, label=method)
                ax.fill_between(xs, [s["min"] for s in st], [s["max"] for s in st], color=colour, alpha=0.18, lw=0)
            if len(set(xs)) > 1:
                ax.set_xscale("log")
            ax.set_xticks(xs, [f"full\n({x})" if lb == "full" else lb for lb, x in zip(labels, xs)], fontsize=7)
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if row == 0:
                p, r = setting["layers"][layer]["W_shape"]
                ax.set_title(f"{key} {layer}\n(block {p * r}×{p * r})", fontsize=8)
            else:
                ax.set_xlabel("batch size", fontsize=8)
        axes[0, 0].set_ylabel("Error 1 (Frobenius)", fontsize=8)
        axes[1, 0].set_ylabel("Error 2 (spectrum)", fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize=8)
    seeds = len(report["meta"]["seeds"])
    fig.suptitle(f"{', '.join(methods)} vs the exact Fisher block: mean and min–max over {seeds} seed(s)", fontsize=9)
    fig.savefig(path, dpi=80)
    return path


def full_batch_table(report: dict[str, Any], page: str) -> str:
    """Markdown table of the page's methods at the full batch: Error 1 and Error 2 per layer, with the references.

    Parameters
    ----------
    report : dict
        The parsed ``report.json`` of ``kronalg-report``.
    page : str
        A key of :data:`PAGES`.

    Returns
    -------
    str
        The table (empty when the report has none of the page's methods).
    """
    methods = [m for m in PAGES[page] if m in report["meta"]["methods"]]
    if not methods:
        return ""
    cols = [*methods, *(ref for ref, _, _ in _REFERENCES if ref not in methods and ref in report["meta"]["methods"])]
    head = "| layer (block) | " + " | ".join(f"{c} E1 / E2" for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for key, layer, setting in _panels(report):
        p, r = setting["layers"][layer]["W_shape"]
        cells = []
        for c in cols:
            st = setting["summary"][layer][c]["full"]
            cells.append(f"{st['error1']['mean']:.3g} / {st['error2']['mean']:.3g}")
        lines.append(f"| {key} {layer} ({p * r}×{p * r}) | " + " | ".join(cells) + " |")
    seconds = []
    for key, setting in report["settings"].items():
        first = next(iter(setting["layers"]))
        times = [f"{setting['summary'][first][c]['full']['seconds']['mean']:.3g}" for c in cols]
        seconds.append(f"{key} " + " / ".join(times))
    lines.append("")
    lines.append(
        f"Wall time [s] of `fisher_blocks` at the full batch ({' / '.join(cols)}): " + "; ".join(seconds) + "."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python docs/approximation_figures.py REPORT_DIR [--out DIR]``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path, help="folder holding report.json (kronalg-report --out)")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNGs (default docs/img)")
    ap.add_argument("--tables", action="store_true", help="also print each page's full-batch table (Markdown)")
    args = ap.parse_args(argv)
    report = json.loads((args.report_dir / "report.json").read_text())
    if args.tables:
        for page in PAGES:
            print(f"## {page}\n\n{full_batch_table(report, page)}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    for page in PAGES:
        path = plot_page(report, page, args.out / f"approx_{page}.png")
        print(f"{page}: {path if path else 'not in this report'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
