import io

import numpy as np
import pytest
from PIL import Image

from tl_core.data.images import MAX_PIXELS, BadImage, open_rgb


def _png(img: Image.Image) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    buf.seek(0)
    return buf


@pytest.mark.parametrize("mode,colour", [("L", 128), ("1", 1), ("P", 3), ("RGBA", (255, 0, 0, 255)), ("LA", (90, 255)), ("I;16", 40000)])
def test_every_mode_becomes_rgb(mode, colour):
    img = open_rgb(_png(Image.new(mode, (20, 10), colour)))
    assert img.mode == "RGB" and img.size == (20, 10)


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert open_rgb(_png(rgba)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_and_16_bit_keep_their_content():
    buf = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(buf, "JPEG")
    r, g, b = open_rgb(io.BytesIO(buf.getvalue())).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # cyan=0, magenta=yellow=full: red
    ramp = Image.fromarray(np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (4, 1)).astype(np.uint16))
    row = np.asarray(open_rgb(_png(ramp)))[0, :, 0]
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row.astype(int)) > 0)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert open_rgb(io.BytesIO(buf.getvalue())).size == (20, 60)


def test_truncated_and_non_images_are_refused_with_reasons(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(buf, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[:400])
    with pytest.raises(BadImage, match="truncated"):
        open_rgb(cut)
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(BadImage, match="not an image"):
        open_rgb(text)


def test_decompression_bomb_is_refused(tmp_path):
    side = int(MAX_PIXELS**0.5) + 100
    bomb = tmp_path / "bomb.png"
    Image.new("1", (side, side)).save(bomb)
    assert bomb.stat().st_size < 2_000_000  # small on disk, huge in memory
    with pytest.raises(BadImage, match="too large"):
        open_rgb(bomb)


def test_a_corrupt_exif_block_decodes_without_a_warning(tmp_path):
    import struct
    import subprocess
    import sys

    from helpers import ROOT

    ifd = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 5) + struct.pack("<HHII", 0x010E, 2, 1, 0)  # 5 entries, 1 there
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "cam.jpg", exif=b"Exif\x00\x00" + ifd)
    done = subprocess.run([sys.executable, "-c", "import sys; from tl_core.data.images import open_rgb; "
                           "print(open_rgb(sys.argv[1]).size)", str(tmp_path / "cam.jpg")],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(8, 8)" and done.stderr == ""


def test_checking_a_16_bit_image_makes_no_float_copy(tmp_path):
    import tracemalloc

    from tl_core.data.images import check_decodes

    w, h = 3000, 2000
    Image.new("I;16", (w, h), 1000).save(tmp_path / "deep.png")
    tracemalloc.start()
    check_decodes(tmp_path / "deep.png", min_side=64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < w * h // 4  # the RGB conversion's float copies took 8 bytes a pixel and more
    assert open_rgb(tmp_path / "deep.png").size == (w, h)  # and the image itself is fine
