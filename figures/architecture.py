"""Architecture figures: a model's blocks and how data flows between them, traced by a forward pass.

:func:`trace_graph` runs the model twice on an example input: once with a hook on every submodule
to choose the blocks (the deepest nesting level that still gives at most ``max_blocks``), once
with hooks on those blocks only and a ``TorchFunctionMode`` that follows every tensor through the
operations between them (``torch.cat``, ``+``, ``interpolate``, ...), so each block knows which
blocks its inputs came from. :func:`plot_architecture` lays the blocks out in rows, parallel
branches (DeepLabv3's ASPP, its auxiliary head, LR-ASPP's two heads, BEiT's ``cls_token``) side
by side, with an arrow for every input.
"""
import weakref

import matplotlib.pyplot as plt
import torch
from torch.overrides import TorchFunctionMode

from figures.plots import class_colors, save_figure

INPUT, OUTPUT = "input", "output"


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


def plot_architecture(blocks, path, *, title, input_shape, outputs=None):
    """Draw traced blocks as boxes (name, type, output shape, parameters) with their data flow.

    Args:
        blocks: :func:`trace_graph`'s blocks (without ``sources``, drawn as one chain).
        path: the PNG.
        title: the figure's title.
        input_shape: the traced input's shape, (1, C, H, W).
        outputs: the blocks the model's outputs come from, drawn into an output box.

    Returns:
        ``{"path", "panels": 1, "blocks", "params", "rows", "lanes"}``.
    """
    blocks = [dict(b, sources=b.get("sources", [prev["name"]] if i else [INPUT]))
              for i, (prev, b) in enumerate(zip([None, *blocks], blocks))]
    where = layout(blocks, outputs)
    rows, lanes = 1 + max(r for r, _ in where.values()), 1 + max(k for _, k in where.values())
    lane_width = 3.4
    fig, ax = plt.subplots(figsize=(max(8.5, lane_width * lanes + 0.8), 0.6 * rows + 1.2))
    kinds = sorted({b["type"] for b in blocks})
    colours = dict(zip(kinds, class_colors(max(len(kinds), 1)) if len(kinds) <= 60 else []))
    grey = (0.9, 0.9, 0.9, 1)
    boxes = {INPUT: ("input", "", shape_text(tuple(input_shape)), 0, grey)}
    for b in blocks:
        boxes[b["name"]] = (b["name"], b["type"], shape_text(b["shape"]), b["params"], colours.get(b["type"], grey))
    if outputs is not None:
        boxes[OUTPUT] = ("output", "", "", 0, grey)
    width, gap = 1.0 / lanes, 0.06 / lanes
    height = 0.72  # of a row: the rest is the gap arrows run through

    def box(name):
        row, k = where[name]
        return k * width + gap, rows - 1 - row + (1 - height) / 2, width - 2 * gap, height

    for name, (label, kind, shape, params, colour) in boxes.items():
        x, y, w, h = box(name)
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=(*colour[:3], 0.35), edgecolor="0.3"))
        ax.text(x + 0.01 * w, y + 0.68 * h, label + (f"  [{kind}]" if kind else ""), va="center", fontsize=7,
                family="monospace", clip_on=True)
        ax.text(x + 0.01 * w, y + 0.25 * h, shape, va="center", fontsize=7, family="monospace")
        ax.text(x + 0.99 * w, y + 0.25 * h, f"{params:,}" if params else "", va="center", ha="right", fontsize=7,
                family="monospace")
    gutter = 0
    for name in [*(b["name"] for b in blocks), *([OUTPUT] if outputs is not None else [])]:
        targets = outputs if name == OUTPUT else next(b["sources"] for b in blocks if b["name"] == name)
        tx, ty, tw, th = box(name)
        for source in targets:
            sx, sy, sw, sh = box(source)
            start, end = (sx + sw / 2, sy), (tx + tw / 2, ty + th)
            if where[name][0] - where[source][0] == 1:
                points = [start, end]
            else:  # a long edge runs down a gutter right of every lane, never through a box
                gutter += 1
                lane_x = 1 + 0.012 * gutter
                below = sy - (1 - height) / 4
                row, lane = where[name]
                if any(r == row and k > lane for r, k in where.values()):
                    above = ty + th + (1 - height) / 4
                    end_points = [(lane_x, above), (end[0], above), end]
                else:  # nothing right of the target: straight in from the side
                    end_points = [(lane_x, ty + th / 2), (tx + tw, ty + th / 2)]
                points = [start, (start[0], below), (lane_x, below), *end_points]
            xs, ys = zip(*points)
            ax.plot(xs[:-1], ys[:-1], color="0.4", lw=0.6)
            ax.annotate("", xy=points[-1], xytext=points[-2], arrowprops=dict(arrowstyle="->", color="0.4", lw=0.6))
    ax.text(0, rows + 0.05, "each box: block [type]; output per image (C x H x W for feature maps, tokens x width "
            "for token rows) and parameters", fontsize=7)
    ax.set_xlim(-0.01, 1.02 + 0.012 * gutter)
    ax.set_ylim(-0.1, rows + 0.4)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
    return {"path": str(path), "panels": 1, "blocks": len(blocks), "params": sum(b["params"] for b in blocks),
            "rows": rows, "lanes": lanes}


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
