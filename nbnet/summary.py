"""Keras 3's summary table: Layer (type) / Output Shape / Param #, then the totals."""


def _size(count):
    size = float(count * 4)  # float32
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.2f} {unit}"
        size /= 1024


def render_summary(model):
    rows = [(f"{layer.name} ({type(layer).__name__})", str((None,) + tuple(shape)), f"{layer.count_params():,}")
            for layer, shape in zip(model.layers, model.output_shapes)]
    headers = ("Layer (type)", "Output Shape", "Param #")
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) + 2 for i in range(3)]

    def line(left, mid, right, fill):
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(values, sep):
        parts = [f" {values[0]:<{widths[0]}} ", f" {values[1]:<{widths[1]}} ", f" {values[2]:>{widths[2]}} "]
        return sep + sep.join(parts) + sep

    trainable = sum(layer.count_params() for layer in model.layers if layer.trainable) - sum(
        state.size for layer in model.layers if layer.trainable for state in layer.state.values())
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
