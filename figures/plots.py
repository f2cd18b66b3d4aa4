"""Report figures: embeddings, mask grids and overlays, curves and their comparison, confusion, IoU bars.

Every function draws with matplotlib's Agg backend into a PNG and returns a small dict of
metadata (the path, the number of panels, ...), which the tests check instead of pixels.
"""
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from utils.io import atomic_write  # noqa: E402

DPI = 200  # a page-wide figure is 1300 pixels across: print quality, not a poster
PAGE = (6.5, 9.0)  # inches: a report page's text area, which every figure is drawn to fit at its own size
MIN_FONT = 8  # points: the smallest text a figure holds, read at its own size
METRIC_NAMES = {"acc": "accuracy", "miou": "mIoU"}  # how titles and legends spell each logged metric
SAVE_PAD = 0.1  # inches of margin around the drawn content (matplotlib's default)
WIDTH, HEIGHT = PAGE[0] - 2 * SAVE_PAD, PAGE[1] - 2 * SAVE_PAD  # the most a figure's drawing takes


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


# Every figure's text sizes: at the page width its smallest text is MIN_FONT.
STYLE = {"font.size": MIN_FONT, "axes.titlesize": MIN_FONT + 1, "axes.labelsize": MIN_FONT,
         "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT, "legend.fontsize": MIN_FONT,
         "legend.title_fontsize": MIN_FONT, "figure.titlesize": MIN_FONT + 2}
# Ten hues that stay apart (tab10) times five shapes: up to 50 classes, each its own colour and
# marker, which survives print and colour blindness better than 50 hues could.
MARKERS = ("o", "^", "s", "D", "v")


def class_styles(n):
    """``(colour, marker)`` of each of ``n`` classes (at most 50): tab10's hues, then the next marker."""
    if n > 10 * len(MARKERS):
        raise ValueError(f"class_styles: at most {10 * len(MARKERS)} classes")
    hues = plt.get_cmap("tab10")
    return [(hues(c % 10), MARKERS[c // 10]) for c in range(n)]


def legend_columns(labels, width, *, handle=0.45):
    """How many legend entries fit side by side in ``width`` inches at the figures' legend size.

    Args:
        labels: the entries' texts.
        handle: inches an entry takes besides its text (its swatch or marker and the gaps).
    """
    text = max(map(len, labels)) * 0.6 * MIN_FONT / 72  # DejaVu Sans: about 0.6 em a character at most
    return max(1, min(len(labels), int(width // (text + handle))))


def wrapped(text, width, size=STYLE["figure.titlesize"]):
    """``text`` broken into lines that fit ``width`` inches at ``size`` points."""
    return "\n".join(textwrap.wrap(text, width=max(20, int(width * 72 / (0.6 * size)))))


def class_colors(n):
    """``n`` distinct colours (up to 60): tab20, then tab20b, then tab20c."""
    colours = [plt.get_cmap(name)(i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    if n > len(colours):
        raise ValueError(f"class_colors: at most {len(colours)} classes")
    return np.array(colours[:n])


@plt.rc_context(STYLE)
def plot_embeddings(panels, labels, path, *, num_classes, suptitle):
    """2-D scatters of the same points, each class in its own colour and marker, with one legend.

    Panels go two to a row at the page's width; an odd panel out leaves a cell, which the legend
    takes (t-SNE's three epochs), else the legend goes under the panels.

    Args:
        panels: a list of ``(title, points (N, 2))``, or ``(title, points, (x label, y label))`` for
            axes that mean something (PCA's components; t-SNE's do not).
        labels: int array (N,).
        path: the PNG to write.
        num_classes: the size of the style table (styles stay fixed across figures).
        suptitle: the figure's title.

    Returns:
        ``{"path", "panels", "points", "titles", "axis_labels", "inches", "min_font"}``: the panels'
        titles and axis labels (``None`` for a panel without).
    """
    styles = class_styles(num_classes)
    labels = np.asarray(labels)
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    spare = rows * cols > len(panels)
    present = sorted(set(labels.tolist()))
    side = min(WIDTH / cols, 4.0)  # a panel's cell; one panel alone is not a page tall
    below = 0 if spare else 0.3 + 0.17 * -(-len(present) // legend_columns([str(c) for c in present], WIDTH))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, min(HEIGHT, rows * side + below + 0.5)), squeeze=False,
                             layout="constrained")
    axis_labels = [panel[2] if len(panel) > 2 else None for panel in panels]
    for ax, (title, points, *_), names in zip(axes.flat, panels, axis_labels):
        points = np.asarray(points)
        for c in present:  # one call per class: a marker is per call
            colour, marker = styles[c]
            at = points[labels == c]
            ax.scatter(at[:, 0], at[:, 1], color=colour, marker=marker, s=9, linewidths=0, alpha=0.85)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        if names is not None:
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
    handles = [Line2D([], [], linestyle="", marker=styles[c][1], color=styles[c][0], markersize=5, label=str(c))
               for c in present]
    legend = dict(handles=handles, title="class", frameon=False, handletextpad=0.2, columnspacing=0.8)
    if spare:
        cell = axes.flat[-1]
        cell.axis("off")
        cell.legend(loc="center", ncol=legend_columns([str(c) for c in present], side), **legend)
    else:
        fig.legend(loc="outside lower center", ncol=legend_columns([str(c) for c in present], WIDTH), **legend)
    fig.suptitle(wrapped(suptitle, WIDTH))
    return {**save_figure(fig, path), "path": str(path), "panels": len(panels), "points": len(labels),
            "titles": [p[0] for p in panels], "axis_labels": axis_labels}


@plt.rc_context(STYLE)
def plot_curves(records, path, *, metric, title):
    """Training curves from ``metrics.jsonl`` records: losses, the validation metric, the lr.

    Args:
        records: the run's ``metrics.jsonl`` records.
        path: the PNG to write.
        metric: the validation metric (``acc``, ``miou``): ``val_<metric>`` of each record.
        title: what the curves are of (a run's name); the figure's title goes on to say what it shows.

    Returns:
        ``{"path", "panels": 3, "epochs", "lr_axis": (bottom, top) of the learning-rate panel, "titles",
        "inches", "min_font"}``: the figure's title, then the panels'.
    """
    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 2.6), layout="constrained")
    axes[0].plot(epochs, [r["train_loss"] for r in records], label="train")
    axes[0].plot(epochs, [r["val_loss"] for r in records], label="validation")
    axes[0].set_title("loss")
    axes[0].legend()
    values = [r[f"val_{metric}"] for r in records]
    best = int(np.argmax(values))
    axes[1].plot(epochs, values, color="tab:green")
    axes[1].scatter([epochs[best]], [values[best]], color="tab:red", zorder=3)
    # The best value in the title: a legend inside a panel a third of a page wide covers the curve.
    axes[1].set_title(f"validation {METRIC_NAMES[metric]}\nbest {values[best]:.4f} (epoch {epochs[best]}, red)")
    lrs = [r["lr"] for r in records]
    axes[2].plot(epochs, lrs, color="tab:purple")
    axes[2].set_title("learning rate\n(epoch start)")
    if max(lrs) == min(lrs):
        # Autoscaling a flat line spreads +-4% of it over the axis (0.000096 to 0.000104 for
        # 1e-4), which reads as a schedule; a constant rate gets an axis from zero and says so.
        axes[2].set_ylim(0, 2 * lrs[0] if lrs[0] > 0 else 1)
        axes[2].set_yticks([0, lrs[0], 2 * lrs[0]] if lrs[0] > 0 else [0])
        axes[2].set_title(f"learning rate:\nconstant {lrs[0]:.3g}")
    axes[2].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))  # no "1e-4" offset text
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # short runs would get ticks at 1.2, 1.4
        ax.grid(alpha=0.3)
    suptitle = f"{title}: loss, validation {METRIC_NAMES[metric]} and learning rate per epoch"
    fig.suptitle(wrapped(suptitle, WIDTH))
    lr_axis = tuple(float(v) for v in axes[2].get_ylim())
    titles = [suptitle, *(ax.get_title() for ax in axes)]
    return {**save_figure(fig, path), "path": str(path), "panels": 3, "epochs": len(records), "lr_axis": lr_axis,
            "titles": titles}


@plt.rc_context(STYLE)
def plot_compare(runs, path, *, metric, title):
    """Several runs' curves on shared axes: the validation metric with each best epoch marked, and the
    training loss.

    Args:
        runs: a list of ``(label, metrics.jsonl records)``.
        path: the PNG to write.
        metric: the validation metric (``acc``, ``miou``): ``val_<metric>`` of each record.
        title: the figure's title.

    Returns:
        ``{"path", "panels": 2, "lines", "best": {label: (epoch, value)}, "titles", "inches", "min_font"}``:
        the figure's title, then the panels'.
    """
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 3.0 + 0.17 * len(runs)), layout="constrained")
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
    axes[0].set_title(f"validation {METRIC_NAMES[metric]}\n(star: best epoch)")
    axes[1].set_title("training loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # short runs would get ticks at 1.5, 2.5
        ax.grid(alpha=0.3)
    # Below the panels, not inside them: the lines of good runs end in the corner a legend takes.
    entries = [line.get_label() for line in axes[0].get_lines()]
    fig.legend(loc="outside lower center", ncol=legend_columns(entries, WIDTH, handle=0.7), frameon=False)
    fig.suptitle(wrapped(title, WIDTH))
    titles = [title, *(ax.get_title() for ax in axes)]
    return {**save_figure(fig, path), "path": str(path), "panels": 2, "lines": len(runs), "best": best_of,
            "titles": titles}


@plt.rc_context(STYLE)
def plot_confusion(matrix, path, *, title, present_only=True):
    """A row-normalised confusion matrix (rows: truth, columns: prediction).

    Args:
        present_only: draw only the classes that occur in the truth or the predictions (all 50
            on the course's data; the demo's digits use 10), labelled with their class ids.

    Returns:
        ``{"path", "panels": 1, "classes", "inches", "min_font"}``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    ids = np.arange(len(matrix))
    if present_only:
        ids = ids[(matrix.sum(0) + matrix.sum(1)) > 0]
        matrix = matrix[np.ix_(ids, ids)]
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(WIDTH, 5.6), layout="constrained")
    image = ax.imshow(normalised, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(0, n, 5 if n > 20 else 1)
    ax.set_xticks(ticks, [str(ids[t]) for t in ticks])
    ax.set_yticks(ticks, [str(ids[t]) for t in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(wrapped(title, WIDTH - 1, STYLE["axes.titlesize"]))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return {**save_figure(fig, path), "path": str(path), "panels": 1, "classes": n}


@plt.rc_context(STYLE)
def plot_class_iou(ious, names, path, *, title):
    """Per-class IoU bars with their values and the mIoU as a dashed line; a class absent from both
    sides is marked, not drawn as zero.

    The mIoU's value is written beside the line, right of the axes, and a bar's value sits above the
    bar, or just above the line where the line would run through it.

    Returns:
        ``{"path", "panels": 1, "bars", "miou", "inches", "min_font"}``.
    """
    fig, ax = plt.subplots(figsize=(WIDTH, 3.0), layout="constrained")
    values = [0.0 if v is None else v for v in ious]
    present = [v for v in ious if v is not None]
    miou = float(np.mean(present)) if present else None
    bars = ax.bar(range(len(ious)), values, color="tab:blue", zorder=2)
    ax.set_ylim(0, 1.12)
    if miou is not None:
        ax.axhline(miou, color="tab:red", linestyle="--", lw=1.2, zorder=3)
        ax.annotate(f"mIoU {miou:.4f}", xy=(1, miou), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", ha="left", color="tab:red")
    fig.canvas.draw()  # the labels' heights in data units come from the drawn axes
    to_data = ax.transData.inverted()
    for bar, v in zip(bars, ious):
        text = ax.text(bar.get_x() + bar.get_width() / 2, 0, "absent" if v is None else f"{v:.3f}", ha="center",
                       va="bottom", zorder=4)
        extent = text.get_window_extent()
        height = to_data.transform((0, extent.y1))[1] - to_data.transform((0, extent.y0))[1]
        bottom = bar.get_height() + 0.01
        if miou is not None and bottom - 0.01 <= miou <= bottom + height + 0.01:
            bottom = miou + 0.015  # the line would run through the label: above the line instead
        text.set_y(bottom)
    ax.set_xticks(range(len(ious)))
    ax.set_xticklabels([f"{i}\n{n}" for i, n in enumerate(names)])  # two lines: "1 agriculture" is wider than a bar
    ax.set_ylabel("IoU")
    ax.set_title(wrapped(title, WIDTH - 1, STYLE["axes.titlesize"]))
    return {**save_figure(fig, path), "path": str(path), "panels": 1, "bars": len(ious), "miou": miou}


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


@plt.rc_context(STYLE)
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

    The images are square cells as large as the page takes, at most 3 inches.

    Returns:
        ``{"path", "panels", "rows", "cols", "suptitle", "legend", "inches", "min_font"}``.
    """
    n_rows, n_cols = len(rows), len(col_titles)
    names = [name for name, _ in legend or []]
    aside = 0.3 if row_titles else 0.0  # the row labels' margin

    def cell_for(width):
        """The cells' side, the title's lines and the legend's columns in a figure ``width`` wide: above
        the cells the column titles and the title's lines, below them the legend's title and rows."""
        columns = legend_columns(names, width) if legend else 1
        title = wrapped(suptitle, width) if suptitle else ""
        above = 0.35 + 0.25 * (title.count("\n") + 1 if title else 0)
        below = 0.45 + 0.22 * -(-len(names) // columns) if legend else 0.0
        return min(3.0, (width - aside) / n_cols, (HEIGHT - above - below) / n_rows), title, columns, above, below

    cell, *_ = cell_for(WIDTH)
    cell, title, columns, above, below = cell_for(aside + cell * n_cols)  # a narrower figure wraps its title more
    # "compressed" packs images of a fixed aspect without the bands a plain grid leaves around them.
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(aside + cell * n_cols, above + cell * n_rows + below),
                             squeeze=False, layout="compressed")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c])
            if c == 0 and row_titles:
                ax.set_ylabel(row_titles[r])
    if legend:
        fig.legend(handles=[Patch(facecolor=np.asarray(colour) / 255, edgecolor="0.5", label=name)
                            for name, colour in legend],
                   loc="outside lower center", ncol=columns, frameon=False, title=legend_title)
    if title:
        fig.suptitle(title)
    return {**save_figure(fig, path), "path": str(path), "panels": n_rows * n_cols, "rows": n_rows, "cols": n_cols,
            "suptitle": suptitle, "legend": [(name, tuple(int(v) for v in colour)) for name, colour in legend or []]}
