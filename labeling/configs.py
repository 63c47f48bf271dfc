"""Labeling configs for text, image and table classification, and how a payload becomes task data.

Images reach Label Studio inline as data URLs, so no storage needs to be shared with it. A table
project shows each example's row (its columns but the ids, as Label Studio's <Table> of name and value)
under the project's `field`, a task data key rather than a column.
"""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from labeling.errors import LabelConfigError
from labeling.schemas import EXAMPLES_REQUIRED

FROM_NAME = "label"  # the <Choices> control every Caravan project uses
PROJECT_KINDS = ("text", "image", "table")
OBJECT_TAGS = {"text": "Text", "image": "Image", "table": "Table"}
NEVER_SHOWN = (*EXAMPLES_REQUIRED, "label")  # a table task's row holds neither the ids nor a label


MAX_TITLE = 50  # Label Studio refuses longer project titles


@dataclass(frozen=True)
class ProjectSpec:
    """What a labeling project shows (`kind`: "text", "image" or "table") and which labels it allows."""

    title: str
    kind: str
    choices: tuple[str, ...]
    field: str  # the task data key labelers see: the payload column (a table project: the whole row)
    # A table project's columns labelers see, in this order (empty: every column but the ids): a provider's
    # row may hold what labelers should not read, such as a customer id or a name.
    show: tuple[str, ...] = ()

    @classmethod
    def of(cls, title: str, labeling: Mapping) -> ProjectSpec:
        """The spec a dataset version's `labeling_record` names, under `title`."""
        return cls(title, labeling["kind"], tuple(labeling["choices"]), labeling["field"],
                   tuple(labeling.get("show") or ()))

    def __post_init__(self) -> None:
        if self.kind not in PROJECT_KINDS:
            raise LabelConfigError(f"project kind must be {', '.join(PROJECT_KINDS)}, not {self.kind!r}")
        if (
            not self.choices
            or len(set(self.choices)) != len(self.choices)
            or any(not c for c in self.choices)
        ):
            raise LabelConfigError(f"choices must be distinct non-empty labels, got {list(self.choices)}")
        if not 0 < len(self.title) <= MAX_TITLE:
            raise LabelConfigError(
                f"project title {self.title!r} has {len(self.title)} characters; Label Studio takes 1 to "
                f"{MAX_TITLE}: shorten CARAVAN_LABELSTUDIO_PROJECT_PREFIX or the dataset version's name"
            )
        if not self.field.isidentifier():
            raise LabelConfigError(
                f"field {self.field!r} must be an identifier (it is a $variable in the config)"
            )
        check_show(self.kind, self.show)

    @property
    def label_config(self) -> str:
        """The Label Studio XML the project is created with (`classification_config`)."""
        return classification_config(self.kind, self.choices, self.field)


def labeling_record(kind: str, field: str, choices: Sequence[str], show: Sequence[str] = ()) -> dict:
    """A dataset version's labeling spec as its catalog entry records it (read by `ProjectSpec.of`);
    `show` only when given, so a record without it keeps its bytes."""
    check_show(kind, show)
    return {"kind": kind, "field": field, "choices": list(choices), **({"show": list(show)} if show else {})}


def check_show(kind: str, show: Sequence[str]) -> None:
    """`show` picks a table project's columns: distinct names, none of them an id or the label."""
    if not show:
        return
    if kind != "table":
        raise LabelConfigError(f"shown columns pick a table's columns; a {kind} project shows its field")
    hidden = [c for c in show if c in NEVER_SHOWN or not c]
    if hidden or len(set(show)) != len(show):
        raise LabelConfigError(
            f"shown columns must be distinct data columns, got {list(show)}: the ids "
            f"{list(EXAMPLES_REQUIRED)} and the label are never shown"
        )


def classification_config(kind: str, choices: Sequence[str], field: str) -> str:
    """Label Studio XML: one object tag (Text, Image or Table) and a single-choice <Choices> on it.

    An image is drawn without smoothing: scaled to the editor's width, a small image (the demo's
    8×8 digits) shows its real pixels instead of a blur the browser invented.
    """
    tag, extra = OBJECT_TAGS[kind], ' smoothing="false"' if kind == "image" else ""
    items = "".join(f"<Choice value={quoteattr(c)}/>" for c in choices)
    return (
        f'<View><{tag} name="{field}" value="${field}"{extra}/>'
        f'<Choices name="{FROM_NAME}" toName="{field}" choice="single" showInline="true">{items}</Choices>'
        "</View>"
    )


def config_choices(label_config: str) -> tuple[str, ...]:
    """The allowed labels of a config's <Choices name="label"> (what annotations are checked against)."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise LabelConfigError(f"labeling config is not valid XML: {exc}") from None
    for node in root.iter("Choices"):
        if node.get("name") == FROM_NAME:
            return tuple(c.get("value") or c.get("alias") or "" for c in node.iter("Choice"))
    raise LabelConfigError(f'labeling config has no <Choices name="{FROM_NAME}">: not a Caravan project')


def choice_result(label: str, field: str) -> list[dict]:
    """An annotation `result` choosing `label`, as Label Studio's editor would submit it."""
    return [{"from_name": FROM_NAME, "to_name": field, "type": "choices", "value": {"choices": [label]}}]


def image_data_url(value: object) -> str:
    """A data URL for an image payload: encoded bytes (PNG/JPEG/GIF/WebP) or a square grid of numbers."""
    if isinstance(value, str) and value.startswith("data:image/"):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return f"data:{_sniff_mime(data)};base64,{base64.b64encode(data).decode()}"
    if isinstance(value, Sequence):
        return "data:image/png;base64," + base64.b64encode(_grid_png(value)).decode()
    raise LabelConfigError(
        f"cannot show a {type(value).__name__} as an image: give encoded bytes or a pixel grid"
    )


def _sniff_mime(data: bytes) -> str:
    for magic, mime in ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif")):
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise LabelConfigError("image bytes are not PNG, JPEG, GIF or WebP")


def _grid_png(values: Sequence, min_side: int = 128) -> bytes:
    """Grayscale PNG of a flat square (or nested) numeric grid, scaled to 0-255 and enlarged for eyes."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        side = int(round(arr.size**0.5))
        if side * side != arr.size:
            raise LabelConfigError(f"a flat pixel list must be square, got {arr.size} values")
        arr = arr.reshape(side, side)
    if arr.ndim != 2 or arr.size == 0:
        raise LabelConfigError(f"a pixel grid must be 2-D, got shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.zeros_like(arr) if hi == lo else (arr - lo) / (hi - lo) * 255.0
    img = Image.fromarray(scaled.round().astype(np.uint8))  # 2-D uint8: grayscale
    factor = max(1, -(-min_side // max(arr.shape)))
    img = img.resize((arr.shape[1] * factor, arr.shape[0] * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
