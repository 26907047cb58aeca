"""Building a dataset picture by picture: checked images, content-named files, one class per picture."""

import io

import pytest
from PIL import Image

from tl_core.data import builder
from tl_core.data.sources import DatasetError


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, "PNG")
    return buf.getvalue()


def test_a_picture_stays_in_the_class_it_was_added_to(tmp_path):
    folder = builder.dataset_dir(tmp_path, "pets")
    builder.add_image(folder, "ants", png((200, 0, 0)))
    builder.add_image(folder, "ants", png((200, 0, 0)))  # the same picture again, same class: still one file
    with pytest.raises(DatasetError, match="already in 'ants'"):
        builder.add_image(folder, "bees", png((200, 0, 0)))
    builder.add_image(folder, "bees", png((0, 0, 200)))
    assert builder.class_counts(folder) == {"ants": 1, "bees": 1}
