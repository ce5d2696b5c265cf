"""Markdown tables and the number formats the reports share."""


def escape_cell(value, max_length=None):
    """Return ``value`` as one table cell: pipes escaped, line breaks as spaces, maybe shortened."""
    text = " ".join(str(value).split())
    if max_length is not None and len(text) > max_length:
        text = text[: max_length - 3].rstrip() + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|")


def table(header, rows, *, align=None, max_cell_length=None):
    """Return a Markdown table.

    Args:
        header: list of str.
        rows: list of lists, one value per column.
        align: str or None. One character per column, ``l`` or ``r``; default left.
        max_cell_length: int or None. Longer cells are cut and end with ``...``.
    """
    align = align or "l" * len(header)
    rules = ["---:" if side == "r" else "---" for side in align]
    lines = [
        "| " + " | ".join(escape_cell(cell) for cell in header) + " |",
        "| " + " | ".join(rules) + " |",
    ]
    for row in rows:
        cells = [escape_cell(cell, max_cell_length) for cell in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_number(value, digits=4):
    """Return a float with ``digits`` decimals, an int with thousands separators, None as ``-``."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
