"""Keras 3's summary table: Layer (type) / Output Shape / Param # (and, for functional
models, Connected to: the producing layer of each input as ``name[node][tensor]``), then
the totals."""


def _size(count):
    size = float(count * 4)  # float32
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024


def _functional_rows(model):
    """One row per layer: its first call's output shape; each call's inputs connected."""
    from .models import Model

    calls = {}  # layer id -> its nodes in this model, in order
    for tensor in model._input_tensors:
        calls.setdefault(id(tensor.node.layer), []).append(tensor.node)
    for node in model._nodes:
        calls.setdefault(id(node.layer), []).append(node)
    rows = []
    for layer in model.layers:
        nodes = calls.get(id(layer), [])
        shapes = [(None,) + tuple(t.sample_shape) for t in nodes[0].outputs] if nodes else []
        shape = str(shapes[0]) if len(shapes) == 1 else str(shapes)
        sources = [f"{t.node.layer.name}[{calls[id(t.node.layer)].index(t.node)}][{t.index}]"
                   for node in nodes for t in node.inputs]
        params = layer.count_params() if isinstance(layer, Model) or layer.weight_order else 0
        kind = "Functional" if type(layer) is Model else type(layer).__name__  # Keras's name for it
        rows.append((f"{layer.name} ({kind})", shape, f"{params:,}", ", ".join(sources) or "-"))
    return rows


def render_summary(model):
    from .models import Sequential

    if isinstance(model, Sequential):
        rows = [(f"{layer.name} ({type(layer).__name__})", str((None,) + tuple(shape)), f"{layer.count_params():,}")
                for layer, shape in zip(model.layers, model.output_shapes)]
        headers = ("Layer (type)", "Output Shape", "Param #")
    else:
        rows = _functional_rows(model)
        headers = ("Layer (type)", "Output Shape", "Param #", "Connected to")
    columns = len(headers)
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) + 2 for i in range(columns)]

    def line(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(values, sep):
        parts = [f" {values[0]:<{widths[0]}} ", f" {values[1]:<{widths[1]}} ", f" {values[2]:>{widths[2]}} "]
        parts += [f" {value:<{width}} " for value, width in zip(values[3:], widths[3:])]
        return sep + sep.join(parts) + sep

    layers = model._weight_layers()
    trainable = sum(layer.count_params() for layer in layers if layer.trainable) - sum(
        state.size for layer in layers if layer.trainable for state in layer.state.values())
    total = model.count_params()
    out = [f'Model: "{model.name}"', line("┏", "┳", "┓", "━"), cells(headers, "┃"), line("┡", "╇", "┩", "━")]
    for index, row in enumerate(rows):
        out.append(cells(row, "│"))
        if index < len(rows) - 1:
            out.append(line("├", "┼", "┤", "─"))
    out.append(line("└", "┴", "┘", "─"))
    out.append(f" Total params: {total:,} ({_size(total)})")
    out.append(f" Trainable params: {trainable:,} ({_size(trainable)})")
    out.append(f" Non-trainable params: {total - trainable:,} ({_size(total - trainable)})")
    return "\n".join(out)
