"""Accuracy against wall time: ``cifar10.py`` at several budgets for each recipe, one plot.

    python bench/cifar10_curve.py --train DIR --holdout 500 [--budgets 2 5 10 15]
        [--recipes cifar10 cifar10-sgd cifar10-w1 cifar10-small] [--out bench/results/cifar10-curve]

Each (recipe, budget) is its own ``cifar10.py`` run in a fresh process, one after another
(never two at once: they would share the cores and time each other), its log and JSON kept
in ``OUT``. A run whose JSON is already there is not repeated, so an interrupted sweep goes
on where it stopped (``--rerun`` repeats them all). Then the figure ``OUT/cifar10_curve.png``
(held-out top-1 against the elapsed minutes, everything included) and a Markdown table.
``--plot-only`` draws from the JSON files alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> (legend label, cifar10.py arguments)
# The cifar10 preset before Muon (issue 17's third session): SGD with one-cycle.
_SGD = ["--set", "optimizer=torch", "--set", "schedule=onecycle", "--set", "onecycle_pct=0.23",
        "--set", "onecycle_div=5"]
RECIPES = {
    "cifar10": ("cifar10 (alexnet_fast, Muon)", ["--preset", "cifar10"]),
    "cifar10-sgd": ("alexnet_fast width 1.25, SGD one-cycle (the preset before)",
                    ["--preset", "cifar10", *_SGD, "--set", "model_options={width: 1.25}"]),
    "cifar10-w1": ("alexnet_fast width 1, SGD one-cycle (the first fast preset)",
                   ["--preset", "cifar10", *_SGD, "--set", "model_options={width: 1.0}"]),
    "cifar10-small": ("cifar10-small (alexnet_small, first wave)", ["--preset", "cifar10-small"]),
}


def run_one(args: argparse.Namespace, recipe: str, minutes: float) -> dict:
    """One ``cifar10.py`` run (or its stored result)."""
    stem = args.out / f"{recipe}-{minutes:g}min"
    result = stem.with_suffix(".json")
    if result.exists() and not args.rerun:
        return json.loads(result.read_text())
    cmd = [sys.executable, str(HERE / "cifar10.py"), "--train", str(args.train), "--minutes", f"{minutes:g}",
           *RECIPES[recipe][1], "--json", str(result)]
    cmd += ["--holdout", str(args.holdout)] if args.test is None else ["--test", str(args.test)]
    print(f"running {recipe} for {minutes:g} min: {' '.join(cmd[1:])}", flush=True)
    with stem.with_suffix(".log").open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not result.exists():
        raise SystemExit(f"error: the {recipe} run for {minutes:g} min failed (exit {code}); see {stem}.log")
    return json.loads(result.read_text())


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # only the first recipe's points are labelled (the others' figures are in the table:
    # their curves run close together and labels would overlap)
    for i, ((recipe, runs), marker) in enumerate(zip(results.items(), "os^v", strict=False)):
        runs = sorted(runs, key=lambda r: r["elapsed_s"])
        xs = [r["elapsed_s"] / 60 for r in runs]
        ys = [100 * r["top1_tta"] for r in runs]
        ax.plot(xs, ys, marker=marker, label=RECIPES[recipe][0], linewidth=2.2 if i == 0 else 1.2,
                alpha=1.0 if i == 0 else 0.75)
        for x, y, r in zip(xs, ys, runs, strict=True) if i == 0 else ():
            left = x > 3  # (not over the axis labels)
            ax.annotate(f"{y:.1f}% ({r['epochs']} ep)", (x, y), textcoords="offset points",
                        xytext=(-6, 6) if left else (6, -4), ha="right" if left else "left", fontsize=8)
    for target, minutes, offset in ((92, 15, (-118, 8)), (85, 5, (9, -3))):
        ax.plot([minutes], [target], marker="*", color="black", markersize=10, linestyle="none")
        ax.annotate(f"target {target}% in {minutes} min", (minutes, target), textcoords="offset points",
                    xytext=offset, fontsize=8)
    ax.margins(x=0.06, y=0.08)
    ax.set_xlabel("wall time, minutes (decode + train + 6-view evaluation)")
    ax.set_ylabel("held-out top-1, % (6-view TTA)")
    ax.set_title("CIFAR-10 on 2 CPU cores: accuracy against the time budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(results: dict[str, list[dict]]) -> str:
    rows = ["| recipe | budget | epochs | train images/s | elapsed | single view | flip | **6 views** |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for recipe, runs in results.items():
        for r in sorted(runs, key=lambda r: r["budget_minutes"]):
            rows.append(f"| `{recipe}` | {r['budget_minutes']:g} min | {r['epochs']} | {r['train_images_per_s']:,.0f} | "
                        f"{r['elapsed_s'] / 60:.1f} min | {r['top1']:.1%} | {r['top1_flip']:.1%} | "
                        f"**{r['top1_tta']:.1%}** |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True)
    p.add_argument("--test", type=Path, default=None)
    p.add_argument("--holdout", type=int, default=500)
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10, 15], help="minutes (default 2 5 10 15)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=tuple(RECIPES))
    p.add_argument("--out", type=Path, default=HERE / "results" / "cifar10-curve")
    p.add_argument("--rerun", action="store_true", help="repeat runs whose results are stored")
    p.add_argument("--plot-only", action="store_true", help="draw from the stored results; run nothing")
    args = p.parse_args(argv)
    if any(b <= 0 for b in args.budgets):
        p.error("--budgets must be > 0")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for recipe in args.recipes:
        for minutes in args.budgets:
            stored = args.out / f"{recipe}-{minutes:g}min.json"
            if args.plot_only:
                if stored.exists():
                    results.setdefault(recipe, []).append(json.loads(stored.read_text()))
                continue
            results.setdefault(recipe, []).append(run_one(args, recipe, minutes))
    if not results:
        raise SystemExit(f"error: no results in {args.out}")
    plot(results, args.out / "cifar10_curve.png")
    print(table(results))
    print(f"figure: {args.out / 'cifar10_curve.png'}")
    return results


if __name__ == "__main__":
    main()
