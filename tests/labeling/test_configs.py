"""Labeling configs and image payloads (pure, no server)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from labeling import LabelConfigError, ProjectSpec, config_choices, image_data_url, labeling_record


def test_config_round_trips_choices_including_awkward_labels():
    spec = ProjectSpec("t", "text", ("a&b", 'say "hi"', "0"), "text")
    assert config_choices(spec.label_config) == ("a&b", 'say "hi"', "0")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kind": "audio"}, "kind"),
        ({"choices": ()}, "choices"),
        ({"choices": ("a", "a")}, "distinct"),
        ({"field": "not a name"}, "identifier"),
        ({"title": "x" * 51}, "51 characters; .* 1 to 50: shorten CARAVAN_LABELSTUDIO_PROJECT_PREFIX"),
        ({"title": ""}, "has 0 characters"),
        ({"show": ("age",)}, "a text project shows its field"),
        ({"kind": "table", "show": ("age", "example_id")}, "ids .* are never shown"),
        ({"kind": "table", "show": ("age", "label")}, "never shown"),
        ({"kind": "table", "show": ("age", "age")}, "distinct"),
    ],
)
def test_bad_project_specs_are_named(kwargs, words):
    args = {"title": "t", "kind": "text", "choices": ("a", "b"), "field": "text", **kwargs}
    with pytest.raises(LabelConfigError, match=words):
        ProjectSpec(**args)


def test_a_labeling_record_names_its_shown_columns_only_when_it_has_them():
    """A version's record keeps its old bytes without `show`, and reads back as the same spec."""
    plain = labeling_record("table", "row", ("churn", "stay"))
    assert plain == {"kind": "table", "field": "row", "choices": ["churn", "stay"]}
    picked = labeling_record("table", "row", ("churn", "stay"), ("tenure", "plan"))
    assert picked["show"] == ["tenure", "plan"]
    spec = ProjectSpec.of("t", picked)
    assert spec == ProjectSpec("t", "table", ("churn", "stay"), "row", ("tenure", "plan"))
    assert ProjectSpec.of("t", plain).show == ()
    with pytest.raises(LabelConfigError, match="text project"):
        labeling_record("text", "text", ("a",), ("x",))


def test_config_without_caravan_choices_is_refused():
    with pytest.raises(LabelConfigError, match="Choices"):
        config_choices('<View><Text name="t" value="$t"/></View>')
    with pytest.raises(LabelConfigError, match="XML"):
        config_choices("<View>")


def _decode(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_pixel_grid_becomes_an_enlarged_grayscale_png():
    grid = list(range(64))  # an 8x8 digit-like grid, 0..63
    img = _decode(image_data_url(grid))
    assert img.mode == "L" and img.size == (128, 128)
    assert img.getpixel((0, 0)) == 0 and img.getpixel((127, 127)) == 255  # scaled to the full range


def test_encoded_image_bytes_keep_their_format():
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(buf, format="JPEG")
    assert image_data_url(buf.getvalue()).startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("value, words", [(b"not an image", "PNG"), ([1, 2, 3], "square"), (3.5, "float")])
def test_unshowable_images_are_named(value, words):
    with pytest.raises(LabelConfigError, match=words):
        image_data_url(value)
