"""Speed-up bar charts of benchmarks.run's tables (matplotlib, Agg: no display needed)."""

from __future__ import annotations


# One colour per variant in every panel.
COLOURS = {"reference": "tab:blue", "compile(reference)": "tab:orange", "torch": "tab:green", "cpp": "tab:red",
           "cuda": "tab:purple", "triton": "tab:brown"}


def _op_label(row: dict) -> str:
    """e.g. "spatial\nC'=32\nN=2048\nK=256" (the batch, the same in every row, left out)."""
    return row["branch"] + "\n" + row["shape"].split(", ", 1)[1].replace(", ", "\n")


def plot_speedups(module_rows: list[dict], op_rows: list[dict], path: str, title: str) -> str | None:
    """One panel per table (RGAModule per branch, then each op): forward + backward speed-up over
    the reference eager, per shape (x) and variant (bars), log scale. Returns the path, or None
    when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = []
    for branch in dict.fromkeys(r["module"] for r in module_rows):
        rows = [r for r in module_rows if r["module"] == branch]
        panels.append((f"RGAModule {branch}", rows, lambda r: f"{r['in_channel']}\n{r['hw']}"))
    for op in dict.fromkeys(r["op"] for r in op_rows):
        rows = [r for r in op_rows if r["op"] == op]
        panels.append((op, rows, _op_label))
    if not panels:
        return None
    columns = 2
    rows_of_panels = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(7 * columns, 3.6 * rows_of_panels), squeeze=False)
    for ax, (name, rows, label) in zip(axes.flat, panels):
        shapes = list(dict.fromkeys(label(r) for r in rows))
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            values = {label(r): r["speedup"] for r in rows if r["variant"] == variant}
            xs = [j + (i - (len(variants) - 1) / 2) * width for j, s in enumerate(shapes) if s in values]
            ax.bar(xs, [values[s] for s in shapes if s in values], width, label=variant, color=COLOURS.get(variant))
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}x" if str(v)[0] in "25" else ""))
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(shapes, fontsize=6)
        ax.set_ylabel("fwd+bwd speed-up over reference")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
