"""Markdown for the Dagster UI: small tables and PNG plots inlined as data URLs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table of `rows` under `header`; each cell is shown with `str`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _png_md(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def histogram_md(values: Sequence[float], title: str, bins: int = 40) -> str:
    """A histogram of `values`, with a line at zero, as an inline PNG image in Markdown."""
    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.hist(values, bins=bins, color="#4c72b0")
    ax.set_title(title)
    ax.axvline(0.0, color="black", linewidth=0.6)
    return _png_md(fig, title)


def bar_md(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    """A horizontal bar chart of `values` (first label on top) as an inline PNG image in Markdown."""
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(labels) + 1))
    ax.barh(list(labels)[::-1], list(values)[::-1], color="#55a868")
    ax.set_title(title)
    return _png_md(fig, title)
