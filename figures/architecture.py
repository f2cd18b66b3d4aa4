"""Architecture figures: a model's blocks and how data flows between them, traced by a forward pass.

:func:`trace_graph` runs the model twice on an example input: once with a hook on every submodule
to choose the blocks (the deepest nesting level that still gives at most ``max_blocks``), once
with hooks on those blocks only and a ``TorchFunctionMode`` that follows every tensor through the
operations between them (``torch.cat``, ``+``, ``interpolate``, ...), so each block knows which
blocks its inputs came from. :func:`plot_architecture` lays the blocks out in rows, parallel
branches (DeepLabv3's ASPP, its auxiliary head, LR-ASPP's two heads, BEiT's ``cls_token``) side
by side, with an arrow for every input, wraps a long chain into columns so that the figure reads
at a report page's width, and keys the boxes' colours (their block types) in a legend.
"""
import textwrap
import weakref

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch
from torch.overrides import TorchFunctionMode

from figures.plots import DPI, SAVE_PAD, class_colors, save_figure

INPUT, OUTPUT = "input", "output"

# Sizes in inches at the boxes' font size; the figure is drawn in inches (one data unit = 1 in).
FONT = 7  # points, the boxes' text
CHAR = 0.602 * FONT / 72  # the advance of one DejaVu Sans Mono character
LINE = 1.25 * FONT / 72  # one line of it
BOX = 3 * LINE + 0.08  # a box's height: its name, its type, its output shape and parameters
ROW = BOX + 0.14  # from one row of boxes to the next: the rest is the gap arrows run through
CHANNEL = 0.07  # between two long edges running side by side down a gutter
COLUMN_GAP = 0.3  # the least space between two columns of a wrapped chain
PAGE = (6.5, 9.0)  # a report page's text area: the wrap is chosen to show the text largest on it
MAX_PIXELS = 2000  # the long side of a saved figure


def _tensors(value):
    """Every tensor inside nested tuples, lists and dicts."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _main_tensor(output):
    """The tensor a block's shape is reported for: ``out`` of a dict, else its last tensor."""
    if isinstance(output, dict) and torch.is_tensor(output.get("out")):
        return output["out"]
    found = list(_tensors(output))
    return found[-1] if found else None


class _Producers(TorchFunctionMode):
    """Which blocks every live tensor comes from, carried through every torch operation.

    Tensors are keyed by ``id`` with a weak reference beside it, so an id that Python reuses
    after a tensor dies is not mistaken for the old tensor (and nothing is kept alive).
    """

    def __init__(self):
        super().__init__()
        self.table = {}

    def set(self, tensor, names):
        self.table[id(tensor)] = (weakref.ref(tensor), frozenset(names))

    def of(self, value):
        found = set()
        for t in _tensors(value):
            ref, names = self.table.get(id(t), (None, ()))
            if ref is not None and ref() is t:
                found |= names
        return found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sources = self.of((args, kwargs))
        if sources:
            for t in _tensors(out):
                self.set(t, sources)
        return out


def _run(model, example):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(example)
    finally:
        model.train(was_training)


def _choose_blocks(model, example, max_blocks):
    """``{name: (type, shape, params)}`` of the blocks, in the order they finish."""
    calls, handles = [], []

    def hook(name):
        def record(module, inputs, output):
            main = _main_tensor(output)
            calls.append((name, type(module).__name__, tuple(main.shape) if main is not None else None,
                          sum(p.numel() for p in module.parameters())))
        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        _run(model, example)
    finally:
        for h in handles:
            h.remove()
    first = {}
    for name, kind, shape, params in calls:
        first.setdefault(name, (kind, shape, params))
    names = list(first)
    # Nesting counted over called modules only: containers that are never called themselves
    # (ModuleList, say) are transparent, so nothing under them is lost from the cut.
    level = {n: 1 + sum(n.startswith(a + ".") for a in names) for n in names}

    def cut(depth):
        return [n for n in names if level[n] <= depth
                and not any(o.startswith(n + ".") and level[o] <= depth for o in names)]

    best = cut(1)
    for depth in range(2, 10):
        blocks = cut(depth)
        if len(blocks) > max_blocks:
            break
        best = blocks
    return {n: first[n] for n in best}


def trace_graph(model, example, max_blocks=50):
    """The blocks a forward pass runs through and where each one's inputs come from.

    Parameters that belong to no block (BEiT's ``cls_token``) become blocks of their own, of
    type ``Parameter``, listed before the other inputs of their first user. A source that also
    feeds another source of the same block (a residual connection) is left out.

    Returns:
        ``{"blocks": [{"name", "type", "shape", "params", "sources"}], "outputs": sources}``:
        ``sources`` are block names, or ``"input"`` for the model's input; ``outputs`` are the
        blocks the model's outputs come from.
    """
    chosen = _choose_blocks(model, example, max_blocks)
    modules = dict(model.named_modules())
    flow, order, sources, handles = _Producers(), [], {}, []

    def enter(name):
        def record(module, args, kwargs):
            if name not in sources:
                sources[name] = flow.of((args, kwargs)) or {INPUT}
        return record

    def leave(name):
        def record(module, args, output):
            if name not in order:
                order.append(name)
            for t in _tensors(output):
                flow.set(t, {name})
        return record

    outside = [(n, p) for n, p in model.named_parameters() if not any(n.startswith(b + ".") for b in chosen)]
    for name in chosen:
        handles.append(modules[name].register_forward_pre_hook(enter(name), with_kwargs=True))
        handles.append(modules[name].register_forward_hook(leave(name)))
    flow.set(example, {INPUT})
    for name, param in outside:
        flow.set(param, {name})
    try:
        with flow:
            output = _run(model, example)
    finally:
        for h in handles:
            h.remove()
    sources = _reduce({**sources, OUTPUT: flow.of(output), **{name: set() for name, _ in outside}})
    blocks = [{"name": n, "type": chosen[n][0], "shape": chosen[n][1], "params": chosen[n][2],
               "sources": sorted(sources[n], key=_position(order))} for n in order]
    for name, param in outside:
        # Listed before the blocks its first user also reads (the cls_token is token 0).
        user = next((b for b in blocks if name in b["sources"]), None)
        at = min((i for i, b in enumerate(blocks) if user and b["name"] in user["sources"]), default=len(blocks))
        blocks.insert(at, {"name": name, "type": "Parameter", "shape": (1, *param.shape[-2:]) if param.dim() > 1
                           else (1, *param.shape), "params": param.numel(), "sources": []})
    return {"blocks": blocks, "outputs": sorted(sources[OUTPUT], key=_position(order))}


def _reduce(sources):
    """Drop every source that also feeds another source of the same block.

    A residual connection makes ``x + f(x)`` come from both ``f`` and what fed ``f``, and a chain
    of them from every block since the chain began; the drawing keeps the direct input only.
    """
    ancestors = {}

    def of(name):
        if name not in ancestors:
            ancestors[name] = set()  # set first: a cycle cannot recurse forever
            for s in sources.get(name, ()):
                ancestors[name] |= {s} | of(s)
        return ancestors[name]

    return {n: {s for s in srcs if not any(s in of(o) for o in srcs if o != s)} for n, srcs in sources.items()}


def _position(order):
    return lambda name: order.index(name) if name in order else -1


def trace_blocks(model, example, max_blocks=50):
    """The blocks of :func:`trace_graph`, without the outputs."""
    return trace_graph(model, example, max_blocks)["blocks"]


def shape_text(shape):
    """An output shape without its batch dimension: C x H x W, tokens x width, or features."""
    if not shape:
        return "-"
    if len(shape) == 3:
        return f"{shape[1]} token{'s' if shape[1] != 1 else ''} x {shape[2]}"
    return "x".join(map(str, shape[1:]))


def layout(blocks, outputs=None):
    """Rows and lanes of the blocks, the input and (when ``outputs`` is given) the output.

    A block sits one row above its first user at the latest (a chain stays a column, parallel
    branches that feed one block share a row, a head's branches line up with its end); it keeps
    the lane of the source it is the first user of when that lane is free, else takes the first
    free lane of its row. In each row, blocks without sources (parameters) are placed first, then
    those that continue a lane, then the others.

    Returns:
        ``{name: (row, lane)}``, the input in row 0.
    """
    names = [b["name"] for b in blocks]
    sources = {b["name"]: list(b["sources"]) for b in blocks}
    if outputs is not None:
        sources[OUTPUT] = list(outputs)
        names = names + [OUTPUT]
    users = {n: [] for n in [INPUT, *names]}
    for n in names:
        for s in sources[n]:
            users.setdefault(s, []).append(n)
    # Rows counted upwards from the end (longest path to a block without users), then flipped.
    height = {}
    for n in reversed(names):
        height[n] = 1 + max((height[u] for u in users[n]), default=-1)
    top = max(height.values(), default=0) + 1
    row = {INPUT: 0, **{n: top - height[n] for n in names}}
    for n in names:  # a parameter with no sources still sits below the input
        row[n] = max(row[n], 1)
    lane, taken = {INPUT: 0}, {(0, 0)}

    def heir_lane(n):
        heirs = [lane[s] for s in sources[n] if s in lane and users[s] and users[s][0] == n]
        return min(heirs) if heirs else None

    for r in sorted({row[n] for n in names}):
        in_row = [n for n in names if row[n] == r]
        # Parameters first (the cls_token takes the left lane), then the blocks that continue a
        # lane, then the branches, which take the free lanes to the right.
        for n in sorted(in_row, key=lambda n: (bool(sources[n]), heir_lane(n) is None)):
            wanted = heir_lane(n)
            if wanted is None or (r, wanted) in taken:
                wanted = next(k for k in range(len(names) + 1) if (r, k) not in taken)
            lane[n] = wanted
            taken.add((r, wanted))
    return {n: (row[n], lane[n]) for n in [INPUT, *names]}


def _kind_colours(kinds):
    """A light fill per block type: the ten tab10 hues first (tab20's even entries), so that up to
    ten types never share a hue; lightened so the black text on them stays readable."""
    table = class_colors(60)
    table = np.concatenate([table[0:20:2], table[1:20:2], table[20:]])
    return {k: tuple(0.45 * np.asarray(table[i][:3]) + 0.55) for i, k in enumerate(kinds)}


class _Wrap:
    """Where every box and gutter lies when the rows of :func:`layout` are cut into ``columns``
    side by side, each column as wide as its own widest row.

    A column break goes near an even share of the rows, where the fewest edges cross it. An edge
    that skips a row or changes column runs in channels of its own: down the gutter right of its
    source's column, then (when that gutter is not beside the target) over the top of the columns
    to the gutter beside the target, and into the target from that side, or from above when
    another box of its row is in the way.
    """

    def __init__(self, where, edges, columns, lane_width):
        self.where, self.lane_width = where, lane_width
        rows = 1 + max(r for r, _ in where.values())
        self.breaks = []
        for k in range(1, columns):
            ideal, reach = round(k * rows / columns), max(1, rows // (4 * columns))
            first = max((self.breaks[-1] if self.breaks else 0) + 1, ideal - reach)
            window = range(first, min(rows - 1, ideal + reach) + 1)
            crossing = {b: sum(where[s][0] < b <= where[t][0] for s, t in edges) for b in window}
            self.breaks.append(min(window, key=lambda b: (crossing[b], abs(b - ideal)), default=window.start))
        self.starts = [0, *self.breaks]
        self.columns = len(self.starts)
        self.lanes = [1 + max(k for r, k in where.values() if self.column(r) == c) for c in range(self.columns)]
        # Each routed edge: its exit channel (gutter, index), and when it must cross over, its level
        # over the top and its entry channel. In a gutter, the edges that turn from it into the
        # column on its right take the channels nearest that column, so that no other edge's
        # channel lies between them and their target.
        gutters = {}
        for s, t in edges:
            cs, ct = self.column(where[s][0]), self.column(where[t][0])
            if cs != ct or where[t][0] - where[s][0] > 1:
                gutters[s, t] = cs, ct - 1 if cs != ct and not self._beside(t, left=True) else ct
        used, index = [0] * self.columns, {}

        def turns_right(use):
            (_, t), g = use
            return g == gutters[use[0]][1] and g < self.column(where[t][0])

        uses = [(edge, g) for edge, pair in gutters.items() for g in dict.fromkeys(pair)]
        for edge, g in sorted(uses, key=turns_right):
            used[g] += 1
            index[edge, g] = (g, used[g])
        self.channels, over = {}, 0
        for edge, (leave, enter) in gutters.items():
            crossing = None
            if enter != leave:
                over += 1
                crossing = (over, index[edge, enter])
            self.channels[edge] = (index[edge, leave], crossing)
        self.gutters = [max(COLUMN_GAP if c < self.columns - 1 else 0, (n + 1) * CHANNEL) for c, n in enumerate(used)]
        self.left = np.cumsum([0, *[n * lane_width + g for n, g in zip(self.lanes, self.gutters)]])[:-1]
        self.width = float(self.left[-1] + self.lanes[-1] * lane_width + self.gutters[-1])
        self.height = ROW * max(b - a for a, b in zip(self.starts, [*self.breaks, rows]))
        self.over = CHANNEL * (over + 1) if over else 0.0  # the levels over the top of the columns

    def column(self, row):
        return sum(row >= b for b in self.breaks)

    def _beside(self, name, *, left):
        """Whether a box of ``name``'s row lies left (or right) of it."""
        row, lane = self.where[name]
        return any(r == row and (k < lane if left else k > lane) for r, k in self.where.values())

    def box(self, name):
        """``(x, y, w, h)`` of a box, y upwards from the bottom of the rows."""
        row, lane = self.where[name]
        c = self.column(row)
        pad = 0.05 * self.lane_width  # half the gap between two boxes
        top = self.height - (row - self.starts[c]) * ROW - (ROW - BOX) / 2
        return self.left[c] + lane * self.lane_width + pad, top - BOX, self.lane_width - 2 * pad, BOX

    def gutter_x(self, channel):
        c, k = channel
        return self.left[c] + self.lanes[c] * self.lane_width + k * CHANNEL

    def route(self, source, target):
        """The polyline of an edge from the bottom of ``source`` into ``target``."""
        sx, sy, sw, sh = self.box(source)
        tx, ty, tw, th = self.box(target)
        start, end = (sx + sw / 2, sy), (tx + tw / 2, ty + th)
        if (source, target) not in self.channels:
            return [start, end]
        leave, crossing = self.channels[source, target]
        gutter, x = leave[0], self.gutter_x(leave)
        gap = ROW - BOX
        points = [start, (start[0], sy - gap / 4), (x, sy - gap / 4)]
        if crossing is not None:
            level, entry = crossing
            gutter, x = entry[0], self.gutter_x(entry)
            points += [(points[-1][0], self.height + level * CHANNEL), (x, self.height + level * CHANNEL)]
        from_left = gutter < self.column(self.where[target][0])
        if not self._beside(target, left=from_left):
            return points + [(x, ty + th / 2), (tx if from_left else tx + tw, ty + th / 2)]
        return points + [(x, ty + th + gap / 4), (end[0], ty + th + gap / 4), end]


def plot_architecture(blocks, path, *, title, input_shape, outputs=None):
    """Draw traced blocks as boxes (name; type, output shape, parameters) with their data flow.

    A long chain wraps into columns side by side, as many as make the figure largest on a report
    page, with its long side at most :data:`MAX_PIXELS`; a legend tells the block types' colours.

    Args:
        blocks: :func:`trace_graph`'s blocks (without ``sources``, drawn as one chain).
        path: the PNG.
        title: the figure's title.
        input_shape: the traced input's shape, (1, C, H, W).
        outputs: the blocks the model's outputs come from, drawn into an output box.

    Returns:
        ``{"path", "panels": 1, "blocks", "params", "rows", "lanes", "columns", "kinds"}``: ``kinds``
        are the block types in the legend.
    """
    blocks = [dict(b, sources=b.get("sources", [prev["name"]] if i else [INPUT]))
              for i, (prev, b) in enumerate(zip([None, *blocks], blocks))]
    where = layout(blocks, outputs)
    edges = [(s, b["name"]) for b in blocks for s in b["sources"]]
    edges += [(s, OUTPUT) for s in outputs or []]
    kinds = sorted({b["type"] for b in blocks})
    colours = _kind_colours(kinds)
    grey = (0.93, 0.93, 0.93)
    # Each box's lines: its name, its type, its output shape with its parameters at the right.
    boxes = {INPUT: (("input", "", shape_text(tuple(input_shape)), ""), grey)}
    for b in blocks:
        boxes[b["name"]] = ((b["name"], b["type"], shape_text(b["shape"]), f"{b['params']:,}" if b["params"] else ""),
                            colours[b["type"]])
    if outputs is not None:
        boxes[OUTPUT] = (("output", "", "", ""), grey)
    # Three characters between the shape and the parameters, one of margin each side, and the gap
    # between two boxes (a tenth of a lane).
    chars = max(max(len(name), len(kind), len(shape) + 3 + len(params))
                for (name, kind, shape, params), _ in boxes.values())
    lane_width = (chars + 2) * CHAR / 0.9
    rows = 1 + max(r for r, _ in where.values())
    legend_entry = (max(map(len, kinds)) + 5) * CHAR  # a swatch and a name, proportional type narrower than this
    note = "each box: block, type, output per image (C x H x W for feature maps, tokens x width for token rows) " \
           "and parameters"

    def legend_columns(width):
        return max(1, int(width // legend_entry))

    def size(wrap):
        legend = 0.35 + 0.2 * -(-len(kinds) // legend_columns(wrap.width))  # its title and rows
        header = 0.35 + LINE * len(note_lines(wrap.width))  # the title and the note
        return wrap.width, wrap.height + wrap.over + header + legend, legend

    def note_lines(width):  # proportional type: about half an em a character
        return textwrap.wrap(note, width=max(40, int(width / (0.55 * FONT / 72))))

    def on_a_page(wrap):
        w, h, _ = size(wrap)
        fits = max(w, h) + 2 * SAVE_PAD <= MAX_PIXELS / DPI
        return fits, min(PAGE[0] / w, PAGE[1] / h)

    # At least three rows a column: fewer is never the largest on a page.
    wrap = max((_Wrap(where, edges, n, lane_width) for n in range(1, max(1, rows // 3) + 1)), key=on_a_page)
    width, height, legend_height = size(wrap)
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(-legend_height, height - legend_height)
    ax.axis("off")
    for name, ((label, kind, shape, params), colour) in boxes.items():
        x, y, w, h = wrap.box(name)
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="0.3", lw=0.7))
        text = dict(va="center", fontsize=FONT, family="monospace")
        lines = [label, kind, shape] if kind else [label, shape]  # the input has no type
        for i, line in enumerate(lines):
            ax.text(x + CHAR, y + h / 2 + (1 - i) * LINE, line, **text)
        ax.text(x + w - CHAR, y + h / 2 - LINE, params, ha="right", **text)
    for source, target in edges:
        points = wrap.route(source, target)
        xs, ys = zip(*points)
        ax.plot(xs[:-1], ys[:-1], color="0.35", lw=0.6)
        ax.annotate("", xy=points[-1], xytext=points[-2], arrowprops=dict(arrowstyle="->", color="0.35", lw=0.6))
    top = wrap.height + wrap.over
    ax.text(width / 2, height - legend_height - 0.05, title, ha="center", va="top", fontsize=10)
    ax.text(0, top + 0.08, "\n".join(note_lines(width)), fontsize=FONT, va="bottom", linespacing=1.25)
    ax.legend(handles=[Patch(facecolor=colours[k], edgecolor="0.3", lw=0.7, label=k) for k in kinds],
              loc="upper left", bbox_to_anchor=(0, -0.08), bbox_transform=ax.transData, ncol=legend_columns(width),
              fontsize=FONT, title="block type (box colour)", title_fontsize=FONT, frameon=False,
              alignment="left", handlelength=1.2, columnspacing=1.0)
    save_figure(fig, path)
    return {"path": str(path), "panels": 1, "blocks": len(blocks), "params": sum(b["params"] for b in blocks),
            "rows": rows, "lanes": 1 + max(k for _, k in where.values()), "columns": wrap.columns, "kinds": kinds}


def architecture_summary(blocks, *, title, input_shape):
    """A text table of the traced blocks (what :func:`plot_architecture` draws)."""
    width = max(len(b["name"]) for b in blocks) + 2
    lines = [title, f"input {tuple(input_shape)}; output per image: C x H x W, or tokens x width", "",
             f"{'block':<{width}}{'type':<26}{'output':<22}{'parameters':>14}  inputs from"]
    for b in blocks:
        lines.append(f"{b['name']:<{width}}{b['type']:<26}{shape_text(b['shape']):<22}{b['params']:>14,}  "
                     f"{', '.join(b.get('sources', [])) or '-'}")
    lines.append(f"{'total':<{width + 48}}{sum(b['params'] for b in blocks):>14,}")
    return "\n".join(lines) + "\n"
