"""Report figures: embeddings, mask grids and overlays, curves and their comparison, confusion, IoU bars.

Every function draws with matplotlib's Agg backend into a PNG and returns a small dict of
metadata (the path, the number of panels, ...), which the tests check instead of pixels.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from utils.io import atomic_write  # noqa: E402

DPI = 200  # a page-wide figure is 1300 pixels across: print quality, not a poster
PAGE = (6.5, 9.0)  # inches: a report page's text area, which every figure is drawn to fit at its own size
MIN_FONT = 8  # points: the smallest text a figure holds, read at its own size
METRIC_NAMES = {"acc": "accuracy", "miou": "mIoU"}  # how titles and legends spell each logged metric
SAVE_PAD = 0.1  # inches of margin around the drawn content (matplotlib's default)


def save_figure(fig, path):
    """Save atomically (a report never holds half a PNG) and close the figure.

    Returns:
        ``{"inches": (width, height) as saved, "min_font": the smallest text's size in points}``:
        on a page the figure is shown at ``inches`` (it is drawn to fit :data:`PAGE`), where its
        text has the sizes it was given.
    """
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", pad_inches=SAVE_PAD)
    # Read after drawing, which gives the tick labels their text.
    fonts = [text.get_fontsize() for text in fig.findobj(Text) if text.get_visible() and text.get_text().strip()]
    plt.close(fig)
    with Image.open(path) as image:  # the size after the tight crop; reads the header only
        inches = tuple(round(pixels / DPI, 2) for pixels in image.size)
    return {"inches": inches, "min_font": min(fonts, default=None)}


def class_colors(n):
    """``n`` distinct colours (up to 60): tab20, then tab20b, then tab20c."""
    colours = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    if n > len(colours):
        raise ValueError(f"class_colors: at most {len(colours)} classes")
    return np.array(colours[:n])


def plot_embeddings(panels, labels, path, *, num_classes, suptitle):
    """Side-by-side 2-D scatters of the same points, coloured by class with one shared legend.

    Args:
        panels: a list of ``(title, points (N, 2))``, or ``(title, points, (x label, y label))`` for
            axes that mean something (PCA's components; t-SNE's do not).
        labels: int array (N,).
        path: the PNG to write.
        num_classes: the size of the colour table (colours stay fixed across figures).
        suptitle: the figure's title.

    Returns:
        ``{"path", "panels", "points", "titles", "axis_labels"}``: the panels' titles and axis labels
        (``None`` for a panel without).
    """
    colours = class_colors(num_classes)
    labels = np.asarray(labels)
    # Constrained layout with the legend "outside": the legend sits right under the panels, not
    # at a guessed offset below a figure that keeps room for it above.
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.6), squeeze=False, layout="constrained")
    axis_labels = [panel[2] if len(panel) > 2 else None for panel in panels]
    for ax, (title, points, *_), names in zip(axes[0], panels, axis_labels):
        points = np.asarray(points)
        ax.scatter(points[:, 0], points[:, 1], c=colours[labels], s=6, linewidths=0, alpha=0.85)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if names is not None:
            ax.set_xlabel(names[0], fontsize=9)
            ax.set_ylabel(names[1], fontsize=9)
    present = sorted(set(labels.tolist()))
    handles = [Patch(color=colours[c], label=str(c)) for c in present]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(25, len(handles)), fontsize=6,
               frameon=False, handlelength=0.8, columnspacing=0.6, title="class", title_fontsize=7)
    fig.suptitle(suptitle, fontsize=12)
    save_figure(fig, path)
    return {"path": str(path), "panels": len(panels), "points": len(labels), "titles": [p[0] for p in panels],
            "axis_labels": axis_labels}


def plot_curves(records, path, *, metric, title):
    """Training curves from ``metrics.jsonl`` records: losses, the validation metric, the lr.

    Args:
        records: the run's ``metrics.jsonl`` records.
        path: the PNG to write.
        metric: the validation metric (``acc``, ``miou``): ``val_<metric>`` of each record.
        title: what the curves are of (a run's name); the figure's title goes on to say what it shows.

    Returns:
        ``{"path", "panels": 3, "epochs", "lr_axis": (bottom, top) of the learning-rate panel, "titles"}``:
        the figure's title, then the panels'.
    """
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(epochs, [r["train_loss"] for r in records], label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in records], label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    values = [r[f"val_{metric}"] for r in records]
    best = int(np.argmax(values))
    axes[1].plot(epochs, values, color="tab:green")
    axes[1].scatter([epochs[best]], [values[best]], color="tab:red", zorder=3,
                    label=f"best {values[best]:.4f} (epoch {epochs[best]})")
    axes[1].set_title(f"validation {METRIC_NAMES[metric]}")
    axes[1].legend()
    lrs = [r["lr"] for r in records]
    axes[2].plot(epochs, lrs, color="tab:purple")
    axes[2].set_title("learning rate (epoch start)")
    if max(lrs) == min(lrs):
        # Autoscaling a flat line spreads +-4% of it over the axis (0.000096 to 0.000104 for
        # 1e-4), which reads as a schedule; a constant rate gets an axis from zero and says so.
        axes[2].set_ylim(0, 2 * lrs[0] if lrs[0] > 0 else 1)
        axes[2].set_yticks([0, lrs[0], 2 * lrs[0]] if lrs[0] > 0 else [0])
        axes[2].set_title(f"learning rate: constant {lrs[0]:.3g}")
    axes[2].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no "1e-4" offset text
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # short runs would get ticks at 1.2, 1.4
        ax.grid(alpha=0.3)
    suptitle = f"{title}: loss, validation {METRIC_NAMES[metric]} and learning rate per epoch"
    fig.suptitle(suptitle, y=1.03)
    lr_axis = tuple(float(v) for v in axes[2].get_ylim())
    save_figure(fig, path)
    return {"path": str(path), "panels": 3, "epochs": len(records), "lr_axis": lr_axis,
            "titles": [suptitle, *(ax.get_title() for ax in axes)]}


def plot_compare(runs, path, *, metric, title):
    """Several runs' curves on shared axes: the validation metric with each best epoch marked, and the
    training loss.

    Args:
        runs: a list of ``(label, metrics.jsonl records)``.
        path: the PNG to write.
        metric: the validation metric (``acc``, ``miou``): ``val_<metric>`` of each record.
        title: the figure's title.

    Returns:
        ``{"path", "panels": 2, "lines", "best": {label: (epoch, value)}, "titles"}``: the figure's
        title, then the panels'.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")  # the title clear of the panels'
    best_of = {}
    for i, (label, records) in enumerate(runs):
        colour = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")(i % 20)
        epochs = [r["epoch"] for r in records]
        values = [r[f"val_{metric}"] for r in records]
        best = int(np.argmax(values))  # the first of equals, as the trainer keeps
        best_of[label] = (epochs[best], values[best])
        axes[0].plot(epochs, values, color=colour, marker=".", label=f"{label}: best {values[best]:.4f} "
                     f"(epoch {epochs[best]})")
        axes[0].scatter([epochs[best]], [values[best]], s=90, marker="*", color=colour, edgecolors="black",
                        linewidths=0.6, zorder=3)
        axes[1].plot(epochs, [r["train_loss"] for r in records], color=colour, marker=".")
    axes[0].set_title(f"validation {METRIC_NAMES[metric]} (star: best epoch)")
    axes[1].set_title("training loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # short runs would get ticks at 1.5, 2.5
        ax.grid(alpha=0.3)
    # Below the panels, not inside them: the lines of good runs end in the corner a legend takes.
    fig.legend(loc="outside lower center", ncol=min(2, len(runs)), fontsize=9, frameon=False)
    fig.suptitle(title)
    titles = [title, *(ax.get_title() for ax in axes)]
    save_figure(fig, path)
    return {"path": str(path), "panels": 2, "lines": len(runs), "best": best_of, "titles": titles}


def plot_confusion(matrix, path, *, title, present_only=True):
    """A row-normalised confusion matrix (rows: truth, columns: prediction).

    Args:
        present_only: draw only the classes that occur in the truth or the predictions (all 50
            on the course's data; the demo's digits use 10), labelled with their class ids.

    Returns:
        ``{"path", "panels": 1, "classes"}``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    ids = np.arange(len(matrix))
    if present_only:
        ids = ids[(matrix.sum(0) + matrix.sum(1)) > 0]
        matrix = matrix[np.ix_(ids, ids)]
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(9, 8))
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(0, n, 5 if n > 20 else 1)
    ax.set_xticks(ticks, [str(ids[t]) for t in ticks])
    ax.set_yticks(ticks, [str(ids[t]) for t in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    save_figure(fig, path)
    return {"path": str(path), "panels": 1, "classes": n}


def plot_class_iou(ious, names, path, *, title):
    """Per-class IoU bars with their values and the mIoU as a dashed line; a class absent from both
    sides is marked, not drawn as zero.

    The mIoU's value is written beside the line, right of the axes, and a bar's value sits above the
    bar, or just above the line where the line would run through it.

    Returns:
        ``{"path", "panels": 1, "bars", "miou"}``.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    values = [0.0 if v is None else v for v in ious]
    present = [v for v in ious if v is not None]
    miou = float(np.mean(present)) if present else None
    bars = ax.bar(range(len(ious)), values, color="tab:blue", zorder=2)
    ax.set_ylim(0, 1.12)
    if miou is not None:
        ax.axhline(miou, color="tab:red", linestyle="--", lw=1.2, zorder=3)
        ax.annotate(f"mIoU {miou:.4f}", xy=(1, miou), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", ha="left", color="tab:red", fontsize=9)
    fig.canvas.draw()  # the labels' heights in data units come from the drawn axes
    to_data = ax.transData.inverted()
    for bar, v in zip(bars, ious):
        text = ax.text(bar.get_x() + bar.get_width() / 2, 0, "absent" if v is None else f"{v:.3f}", ha="center",
                       va="bottom", fontsize=8, zorder=4)
        extent = text.get_window_extent()
        height = to_data.transform((0, extent.y1))[1] - to_data.transform((0, extent.y0))[1]
        bottom = bar.get_height() + 0.01
        if miou is not None and bottom - 0.01 <= miou <= bottom + height + 0.01:
            bottom = miou + 0.015  # the line would run through the label: above the line instead
        text.set_y(bottom)
    ax.set_xticks(range(len(ious)))
    ax.set_xticklabels([f"{i} {n}" for i, n in enumerate(names)], fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_title(title)
    save_figure(fig, path)
    return {"path": str(path), "panels": 1, "bars": len(ious), "miou": miou}


def class_boundaries(classes, width=1):
    """Pixels on a boundary between two classes, (H, W) bool.

    Args:
        classes: (H, W) class indices.
        width: the line's width in pixels: 1 marks the pixel before each change (left of it, above
            it), 2 the pixels on both sides, 3 one more before, and so on.
    """
    classes = np.asarray(classes)
    edge = np.zeros(classes.shape, dtype=bool)
    offsets = [(k + 1) // 2 if k % 2 else -(k // 2) for k in range(width)]  # 0, 1, -1, 2, ...
    for axis, change in ((1, classes[:, :-1] != classes[:, 1:]), (0, classes[:-1, :] != classes[1:, :])):
        rows, cols = np.nonzero(change)
        for offset in offsets:
            at = (rows, cols + offset) if axis == 1 else (rows + offset, cols)
            inside = (at[axis] >= 0) & (at[axis] < classes.shape[axis])
            edge[at[0][inside], at[1][inside]] = True
    return edge


def mask_overlay(image, classes, palette, *, alpha=0.3, boundary=(0, 0, 0), dim=1.0, boundary_width=None):
    """The course visualiser's view: class colours blended at ``alpha`` over the photo, edges drawn.

    Args:
        image: (H, W, 3) uint8.
        classes: (H, W) class indices.
        palette: (C, 3) colours.
        alpha: the colour's weight.
        boundary: the colour of class boundaries.
        dim: the photo's brightness before blending (1 keeps it). White (barren) over a light
            tile is invisible at 1; a darker photo lets every colour, white too, stand out.
        boundary_width: the boundaries' width in pixels; by default one per 256 pixels of the
            image's longer side, at least one: a 512-pixel tile drawn about 450 pixels wide in a
            figure would lose a one-pixel line.

    Returns:
        (H, W, 3) uint8.
    """
    classes = np.asarray(classes)
    width = boundary_width or max(1, round(max(classes.shape) / 256))
    colours = np.asarray(palette, dtype=np.float32)[classes]
    out = (1 - alpha) * dim * np.asarray(image, dtype=np.float32) + alpha * colours
    out[class_boundaries(classes, width)] = boundary
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def plot_image_grid(rows, col_titles, path, *, row_titles=None, suptitle=None, legend=None, legend_title=None):
    """A grid of RGB images: ``rows[r][c]`` an (H, W, 3) uint8 array.

    Args:
        rows: the images, row by row.
        col_titles: a title above each column.
        path: the PNG to write.
        row_titles: a label left of each row.
        suptitle: the figure's title.
        legend: ``(name, (R, G, B) 0-255)`` swatches under the grid.
        legend_title: the legend's title (what its swatches show).

    Returns:
        ``{"path", "panels", "rows", "cols", "suptitle", "legend"}``.
    """
    n_rows, n_cols = len(rows), len(col_titles)
    # "compressed" packs images of a fixed aspect without the bands a plain grid leaves around them.
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3 * n_rows + 0.6), squeeze=False,
                             layout="compressed")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r], fontsize=9)
    if legend:
        fig.legend(handles=[Patch(facecolor=np.asarray(colour) / 255, edgecolor="0.5", label=name)
                            for name, colour in legend],
                   loc="outside lower center", ncol=min(len(legend), 2 * n_cols), fontsize=8, frameon=False,
                   title=legend_title, title_fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    save_figure(fig, path)
    return {"path": str(path), "panels": n_rows * n_cols, "rows": n_rows, "cols": n_cols, "suptitle": suptitle,
            "legend": [(name, tuple(int(v) for v in colour)) for name, colour in legend or []]}
