"""Architecture figures: a model's blocks and how data flows between them, traced by a forward pass.

:func:`trace_graph` runs the model on an example input: once with a hook on every submodule to
find its levels of nesting, then with hooks on one level's blocks only and a
``TorchFunctionMode`` that follows every tensor through the operations between them
(``torch.cat``, ``+``, ``interpolate``, ...), so each block knows which blocks its inputs came
from, and the output knows the resizing applied to it after the last block (torchvision's
segmenters upsample to the input's size in their own ``forward``). Given a ``fits`` test
(:func:`fits_page`), it keeps the deepest level whose drawing fits a report page.

:func:`plot_architecture` lays the blocks out in rows, parallel branches (DeepLabv3's ASPP, its
auxiliary head, LR-ASPP's two heads, BEiT's ``cls_token``) side by side, with an arrow for every
input, and ends with an output box holding the output's shape per image. It wraps a long chain
into the fewest columns that fit :data:`~figures.plots.PAGE` at 1:1, its text at
:data:`~figures.plots.MIN_FONT`, so the figure is shown at the size it is drawn, never scaled
down; an edge between columns runs over their top or under their bottom, whichever is shorter, and
a legend keys the boxes' colours (their block types). :func:`architecture_summary` tables the
same blocks, with every digit of their parameter counts (a box rounds them to three).
"""
import weakref

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import Patch
from torch.overrides import TorchFunctionMode

from figures.plots import HEIGHT, MIN_FONT, WIDTH, class_colors, legend_columns, save_figure, wrapped

INPUT, OUTPUT = "input", "output"

# Sizes in inches at the boxes' font size; the figure is drawn in inches (one data unit = 1 in).
FONT = MIN_FONT  # points, the boxes' text: the smallest a page may hold, so the boxes are as narrow as allowed
CHAR = 0.602 * FONT / 72  # the advance of one DejaVu Sans Mono character (drawn unhinted: see plot_architecture)
LINE = 1.25 * FONT / 72  # one line of it
INSET = CHAR / 2  # from a box's edge to its text
BOX = 3 * LINE + 0.08  # a box's height: its name, its type, its output shape and parameters
ROW = BOX + 0.14  # from one row of boxes to the next: the rest is the gap arrows run through
BOX_GAP = 0.1  # between two boxes of a row
CHANNEL = 0.07  # between two long edges running side by side down a gutter
COLUMN_GAP = 0.2  # the least space between two columns of a wrapped chain


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
    """Which blocks every live tensor comes from, and the resizing (``F.interpolate``, which
    ``upsample`` and ``nn.Upsample`` call) applied to it since, carried through every torch operation.

    Tensors are keyed by ``id`` with a weak reference beside it, so an id that Python reuses
    after a tensor dies is not mistaken for the old tensor (and nothing is kept alive).
    """

    def __init__(self):
        super().__init__()
        self.table = {}

    def set(self, tensor, names, resizes=()):
        """Record a tensor's producing blocks; a block's output starts with no resizing since."""
        self.table[id(tensor)] = (weakref.ref(tensor), frozenset(names), tuple(resizes))

    def _entries(self, value):
        for t in _tensors(value):
            ref, names, resizes = self.table.get(id(t), (None, (), ()))
            if ref is not None and ref() is t:
                yield names, resizes

    def of(self, value):
        """The blocks (or the input) that ``value``'s tensors come from."""
        return set().union(*(names for names, _ in self._entries(value)))

    def resizes(self, value):
        """The resizing applied to ``value``'s tensors since their last block, in order."""
        return list(dict.fromkeys(m for _, resizes in self._entries(value) for m in resizes))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        sources = self.of((args, kwargs))
        if sources:
            resizes = self.resizes((args, kwargs))
            if func is F.interpolate:
                mode = kwargs.get("mode", args[3] if len(args) > 3 else "nearest")
                grows = out.shape[2:].numel() > args[0].shape[2:].numel()
                resizes.append(f"{mode} {'upsampling' if grows else 'resizing'}")
            for t in _tensors(out):
                self.set(t, sources, resizes)
        return out


def _run(model, example):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return model(example)
    finally:
        model.train(was_training)


def _levels(model, example, max_blocks):
    """The ways to cut the model into blocks, deepest first: ``({name: (type, shape, params)},
    [blocks of each level of nesting that has at most max_blocks])``, blocks in the order they finish."""
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

    cuts = []
    for depth in range(1, max(level.values(), default=1) + 1):
        blocks = cut(depth)
        if cuts and (len(blocks) > max_blocks or blocks == cuts[-1]):
            break
        cuts.append(blocks)
    return first, cuts[::-1]


def trace_graph(model, example, max_blocks=50, fits=None):
    """The blocks a forward pass runs through, where each one's inputs come from, and the output.

    The blocks are one level of nesting: the deepest with at most ``max_blocks`` blocks (the
    first level always counts), or, given ``fits``, the deepest of those whose graph ``fits``
    accepts (the first level when none is). Parameters that belong to no block (BEiT's
    ``cls_token``) become blocks of their own, of type ``Parameter``, listed before the other
    inputs of their first user. A source that also feeds another source of the same block (a
    residual connection) is left out.

    Args:
        model: the network; traced in eval mode, without gradients.
        example: an input batch of one.
        max_blocks: the most blocks a level may have.
        fits: a test on a graph (:func:`fits_page`), or ``None`` for the deepest level.

    Returns:
        ``{"blocks": [{"name", "type", "shape", "params", "sources"}], "outputs": sources,
        "input_shape", "output": {"shape", "ops", "keys"}}``: ``sources`` are block names, or
        ``"input"`` for the model's input; ``outputs`` are the blocks the model's outputs come
        from; ``output`` is the shape of the output (its ``out`` for a dict), the resizing applied
        to it after its last block (``"bilinear upsampling"``, ...), and a dict output's keys.
    """
    info, levels = _levels(model, example, max_blocks)
    for blocks in levels:
        graph = _trace(model, example, {n: info[n] for n in blocks})
        if fits is None or fits(graph):
            break
    return graph


def _trace(model, example, chosen):
    """:func:`trace_graph` at the blocks ``chosen``, ``{name: (type, shape, params)}``."""
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
    main = _main_tensor(output)
    result = {"shape": tuple(main.shape) if main is not None else None, "ops": flow.resizes(main),
              "keys": list(output) if isinstance(output, dict) else []}
    sources = _reduce({**sources, OUTPUT: flow.of(output), **{name: set() for name, _ in outside}})
    blocks = [{"name": n, "type": chosen[n][0], "shape": chosen[n][1], "params": chosen[n][2],
               "sources": sorted(sources[n], key=_position(order))} for n in order]
    for name, param in outside:
        # Listed before the blocks its first user also reads (the cls_token is token 0).
        user = next((b for b in blocks if name in b["sources"]), None)
        at = min((i for i, b in enumerate(blocks) if user and b["name"] in user["sources"]), default=len(blocks))
        blocks.insert(at, {"name": name, "type": "Parameter", "shape": (1, *param.shape[-2:]) if param.dim() > 1
                           else (1, *param.shape), "params": param.numel(), "sources": []})
    return {"blocks": blocks, "outputs": sorted(sources[OUTPUT], key=_position(order)),
            "input_shape": tuple(example.shape), "output": result}


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
    side by side, each column's lanes as wide as its own widest box.

    A column break goes near an even share of the rows, where the fewest edges cross it. An edge
    that skips a row or changes column runs in channels of its own: down the gutter right of its
    source's column, then (when that gutter is not beside the target) to the gutter beside the
    target along a level over the top of the columns, or under their bottom when that makes the
    shorter run up and down, and into the target from that side, or from above when another box
    of its row is in the way.
    """

    def __init__(self, where, edges, columns, widths):
        """``widths``: each box's width in inches, by name."""
        self.where = where
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
        self.height = ROW * max(b - a for a, b in zip(self.starts, [*self.breaks, rows]))
        self.lanes = [1 + max(k for r, k in where.values() if self.column(r) == c) for c in range(self.columns)]
        self.lane_width = [BOX_GAP + max(widths[n] for n, (r, _) in where.items() if self.column(r) == c)
                           for c in range(self.columns)]
        # Each routed edge: its exit channel (gutter, index), and when it must cross to another
        # gutter, its side (over or under the columns), its level there and its entry channel. In a
        # gutter, the edges that turn from it into the column on its right take the channels nearest
        # that column, so that no other edge's channel lies between them and their target.
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
        self.channels, levels = {}, {"over": 0, "under": 0}
        for edge, (leave, enter) in gutters.items():
            crossing = None
            if enter != leave:
                # Up from the source's exit and down to the target's entry, or down and up again.
                s, t = edge
                side = "under" if self._exit_y(s) + self._entry_y(t, enter) < self.height else "over"
                levels[side] += 1
                crossing = (side, levels[side], index[edge, enter])
            self.channels[edge] = (index[edge, leave], crossing)
        self.gutters = [max(COLUMN_GAP if c < self.columns - 1 else 0, (n + 1) * CHANNEL if n else 0)
                        for c, n in enumerate(used)]
        self.left = np.cumsum([0, *[n * w + g for n, w, g in zip(self.lanes, self.lane_width, self.gutters)]])[:-1]
        self.width = float(self.left[-1] + self.lanes[-1] * self.lane_width[-1] + self.gutters[-1])
        # The levels over the top of the columns and under their bottom.
        self.over, self.under = (CHANNEL * (levels[side] + 1) if levels[side] else 0.0 for side in ("over", "under"))

    def column(self, row):
        return sum(row >= b for b in self.breaks)

    def _beside(self, name, *, left):
        """Whether a box of ``name``'s row lies left (or right) of it."""
        row, lane = self.where[name]
        return any(r == row and (k < lane if left else k > lane) for r, k in self.where.values())

    def _top(self, name):
        """The y of a box's top edge, upwards from the bottom of the rows."""
        row, _ = self.where[name]
        return self.height - (row - self.starts[self.column(row)]) * ROW - (ROW - BOX) / 2

    def _exit_y(self, name):
        """Where an edge leaves its source's box: just under it, in the gap to the next row."""
        return self._top(name) - BOX - (ROW - BOX) / 4

    def _from_side(self, name, gutter):
        """Whether an edge from ``gutter`` enters ``name`` from its side: no box of its row is in the way."""
        return not self._beside(name, left=gutter < self.column(self.where[name][0]))

    def _entry_y(self, name, gutter):
        """Where an edge from ``gutter`` turns towards its target: level with its middle, or just above it."""
        return self._top(name) - BOX / 2 if self._from_side(name, gutter) else self._top(name) + (ROW - BOX) / 4

    def box(self, name):
        """``(x, y, w, h)`` of a box, y upwards from the bottom of the rows."""
        row, lane = self.where[name]
        c = self.column(row)
        return (self.left[c] + lane * self.lane_width[c] + BOX_GAP / 2, self._top(name) - BOX,
                self.lane_width[c] - BOX_GAP, BOX)

    def gutter_x(self, channel):
        c, k = channel
        return self.left[c] + self.lanes[c] * self.lane_width[c] + k * CHANNEL

    def route(self, source, target):
        """The polyline of an edge from the bottom of ``source`` into ``target``."""
        sx, sy, sw, sh = self.box(source)
        tx, ty, tw, th = self.box(target)
        start, end = (sx + sw / 2, sy), (tx + tw / 2, ty + th)
        if (source, target) not in self.channels:
            return [start, end]
        leave, crossing = self.channels[source, target]
        gutter, x = leave[0], self.gutter_x(leave)
        points = [start, (start[0], self._exit_y(source)), (x, self._exit_y(source))]
        if crossing is not None:
            side, level, entry = crossing
            y = self.height + level * CHANNEL if side == "over" else -level * CHANNEL
            gutter, x = entry[0], self.gutter_x(entry)
            points += [(points[-1][0], y), (x, y)]
        y = self._entry_y(target, gutter)
        if self._from_side(target, gutter):
            return points + [(x, y), (tx if gutter < self.column(self.where[target][0]) else tx + tw, y)]
        return points + [(x, y), (end[0], y), end]


def _count(n):
    """A parameter count in at most five characters, for a box: exact below 10,000, else three
    significant digits with k or M (the text table keeps every digit)."""
    if n < 10_000:
        return f"{n:,}" if n else ""
    value, unit = (n / 1e6, "M") if n >= 999_500 else (n / 1e3, "k")
    return f"{value:.3g}{unit}"


def _output_lines(output):
    """The output box's lines: its name (with a dict's keys, when it has more than ``out``), the resizing after the last block,
    its shape per image; ``output`` is :func:`trace_graph`'s, or ``None`` for the name alone."""
    output = output or {}
    keys = f" ({', '.join(output['keys'])})" if len(output.get("keys", [])) > 1 else ""
    shape = shape_text(output["shape"]) if output.get("shape") else ""
    return OUTPUT + keys, ", ".join(output.get("ops", [])), shape


_NOTE = "each box: block, type, output per image (C x H x W for feature maps, tokens x width for token rows) " \
        "and parameters"


def _drawing(blocks, input_shape, outputs=None, output=None):
    """What :func:`plot_architecture` draws, before drawing it: the boxes' lines and colours, the
    layout, the edges, the block types, the wrap and the figure's size.

    The wrap is the fewest columns whose figure fits :data:`~figures.plots.PAGE`, or the one that
    overflows it least when none does.
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
        boxes[b["name"]] = ((b["name"], b["type"], shape_text(b["shape"]), _count(b["params"])), colours[b["type"]])
    if outputs is not None:
        boxes[OUTPUT] = ((*_output_lines(output), ""), grey)
    # Two characters between the shape and the parameters.
    widths = {name: max(len(label), len(kind), len(shape) + 2 + len(params)) * CHAR + 2 * INSET
              for name, ((label, kind, shape, params), _) in boxes.items()}

    def columns(width):  # of the legend: a swatch and its gaps take five characters' room
        return legend_columns(kinds, width, handle=5 * CHAR)

    def note_lines(width):
        return wrapped(_NOTE, width, FONT).split("\n")

    def size(wrap):
        legend = 0.35 + 0.2 * -(-len(kinds) // columns(wrap.width))  # its title and rows
        header = 0.35 + LINE * len(note_lines(wrap.width))  # the title and the note
        return wrap.width, wrap.height + wrap.over + wrap.under + header + legend, legend

    def overflow(wrap):
        width, height, _ = size(wrap)
        return max(width / WIDTH, height / HEIGHT)  # the saved figure's margin makes it PAGE

    rows = 1 + max(r for r, _ in where.values())
    # At least three rows a column: fewer never makes a shape worth a page.
    wraps = [_Wrap(where, edges, n, widths) for n in range(1, max(1, rows // 3) + 1)]
    wrap = next((w for w in wraps if overflow(w) <= 1), None) or min(wraps, key=overflow)
    return {"boxes": boxes, "where": where, "edges": edges, "kinds": kinds, "colours": colours, "wrap": wrap,
            "size": size(wrap), "fits": overflow(wrap) <= 1, "legend_columns": columns(wrap.width),
            "note": note_lines(wrap.width)}


def fits_page(graph):
    """Whether :func:`plot_architecture` draws ``graph`` (:func:`trace_graph`'s) within
    :data:`~figures.plots.PAGE` at 1:1: the test :func:`trace_graph` chooses its level of nesting by."""
    return _drawing(graph["blocks"], graph["input_shape"], graph["outputs"], graph["output"])["fits"]


def plot_architecture(blocks, path, *, title, input_shape, outputs=None, output=None):
    """Draw traced blocks as boxes (name; type, output shape, parameters) with their data flow.

    The figure is drawn for a report page at its own size: the boxes' text at
    :data:`~figures.plots.MIN_FONT`, a long chain wrapped into the fewest columns that fit
    :data:`~figures.plots.PAGE` (or, for blocks no wrap fits, the wrap that overflows it least:
    :func:`trace_graph` with :func:`fits_page` picks blocks that fit). An edge between columns runs
    over their top or under their bottom, whichever is shorter; a legend tells the block types' colours.

    Args:
        blocks: :func:`trace_graph`'s blocks (without ``sources``, drawn as one chain).
        path: the PNG.
        title: the figure's title.
        input_shape: the traced input's shape, (1, C, H, W).
        outputs: the blocks the model's outputs come from, drawn into an output box.
        output: :func:`trace_graph`'s ``output``, written in the output box: a dict output's keys,
            the resizing after the last block (``bilinear upsampling``) and the shape per image.

    Returns:
        :func:`~figures.plots.save_figure`'s ``inches`` and ``min_font``, and ``{"path", "panels":
        1, "blocks", "params", "rows", "lanes", "columns", "kinds", "fits"}``: ``kinds`` are the block
        types in the legend, ``fits`` whether the drawing was planned within the page.
    """
    plan = _drawing(blocks, input_shape, outputs, output)
    wrap, edges, kinds, colours = plan["wrap"], plan["edges"], plan["kinds"], plan["colours"]
    width, height, legend_height = plan["size"]
    # Unhinted text: hinting snaps each glyph's advance to whole pixels at the resolution it is
    # drawn at, which makes a monospace line up to 5% wider than CHAR says (at 100 dpi) and runs a
    # long name into its box's edge; unhinted, a line is len * CHAR at any resolution.
    with plt.rc_context({"text.hinting": "none"}):
        fig = plt.figure(figsize=(width, height))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, width)
        ax.set_ylim(-legend_height - wrap.under, height - legend_height - wrap.under)
        ax.axis("off")
        for name, ((label, kind, shape, params), colour) in plan["boxes"].items():
            x, y, w, h = wrap.box(name)
            ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=colour, edgecolor="0.3", lw=0.7))
            text = dict(va="center", fontsize=FONT, family="monospace")
            lines = [label, kind, shape] if kind else [label, shape]  # the input has no type
            for i, line in enumerate(lines):
                ax.text(x + INSET, y + h / 2 + (1 - i) * LINE, line, **text)
            ax.text(x + w - INSET, y + h / 2 - LINE, params, ha="right", **text)
        for source, target in edges:
            points = wrap.route(source, target)
            xs, ys = zip(*points)
            ax.plot(xs[:-1], ys[:-1], color="0.35", lw=0.6)
            ax.annotate("", xy=points[-1], xytext=points[-2],
                        arrowprops=dict(arrowstyle="->", color="0.35", lw=0.6))
        top = wrap.height + wrap.over
        ax.text(width / 2, height - legend_height - wrap.under - 0.05, title, ha="center", va="top", fontsize=10)
        ax.text(0, top + 0.08, "\n".join(plan["note"]), fontsize=FONT, va="bottom", linespacing=1.25)
        ax.legend(handles=[Patch(facecolor=colours[k], edgecolor="0.3", lw=0.7, label=k) for k in kinds],
                  loc="upper left", bbox_to_anchor=(0, -0.08 - wrap.under), bbox_transform=ax.transData,
                  ncol=plan["legend_columns"], fontsize=FONT, title="block type (box colour)", title_fontsize=FONT,
                  frameon=False, alignment="left", handlelength=1.2, columnspacing=1.0)
        saved = save_figure(fig, path)
    return {**saved, "path": str(path), "panels": 1, "blocks": len(blocks), "params": sum(b["params"] for b in blocks),
            "rows": 1 + max(r for r, _ in plan["where"].values()), "lanes": 1 + max(k for _, k in plan["where"].values()),
            "columns": wrap.columns, "kinds": kinds, "fits": plan["fits"]}


def architecture_summary(blocks, *, title, input_shape, outputs=None, output=None):
    """A text table of the traced blocks and the output (what :func:`plot_architecture` draws).

    Args:
        blocks: :func:`trace_graph`'s blocks.
        title: the table's first line.
        input_shape: the traced input's shape, (1, C, H, W).
        outputs: the blocks the outputs come from; given, the table ends with the output's row.
        output: :func:`trace_graph`'s ``output``: that row's name, resizing and shape.
    """
    rows = [(b["name"], b["type"], shape_text(b["shape"]), f"{b['params']:,}", ", ".join(b.get("sources", [])) or "-")
            for b in blocks]
    if outputs is not None:
        name, ops, shape = _output_lines(output)
        rows.append((name, ops or "-", shape or "-", "", ", ".join(outputs)))
    width = max(len(r[0]) for r in rows) + 2
    lines = [title, f"input {tuple(input_shape)}; output per image: C x H x W, or tokens x width", "",
             f"{'block':<{width}}{'type':<26}{'output':<22}{'parameters':>14}  inputs from"]
    lines += [f"{name:<{width}}{kind:<26}{shape:<22}{params:>14}  {sources}" for name, kind, shape, params, sources in rows]
    lines.append(f"{'total':<{width + 48}}{sum(b['params'] for b in blocks):>14,}")
    return "\n".join(lines) + "\n"
