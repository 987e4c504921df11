"""Image inputs: paths, PIL images and arrays become RGB images, or a clear error."""

import numpy as np
import pytest
from PIL import Image

from tools import ImageLoadError, load_image


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    image = Image.new(mode, (8, 6))
    assert load_image(image).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_arrays(tmp_path):
    assert load_image(np.zeros((6, 8, 3), np.uint8)).size == (8, 6)
    assert load_image(np.zeros((6, 8), np.uint8)).mode == "RGB"
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((6, 8, 3), np.float32))
    with pytest.raises(ImageLoadError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((6, 8, 2), np.uint8))


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(path)


def test_zero_size_and_wrong_type():
    with pytest.raises(ImageLoadError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageLoadError, match="int"):
        load_image(42)


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 2000)).save(path)
    with pytest.raises(ImageLoadError, match=r"wide.png: 3000x2000 is 6,000,000 pixels, over the limit of 1,000,000"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=None).size == (3000, 2000)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageLoadError, match="empty.jpg: empty file"):
        load_image(path)


def test_a_loaded_rgb_image_passes_through_unchanged():
    image = Image.new("RGB", (8, 6))
    assert load_image(image) is image


def test_encoded_bytes_get_the_checks_of_files():
    import io

    encoded = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 8, 7)).save(encoded, "PNG")
    assert load_image(encoded.getvalue()).size == (40, 30)
    assert load_image(memoryview(encoded.getvalue())).getpixel((0, 0)) == (9, 8, 7)
    with pytest.raises(ImageLoadError, match="empty file"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(b"hello")
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(encoded.getvalue()[:60])
    with pytest.raises(ImageLoadError, match="1,200 pixels, over the limit of 1,000"):
        load_image(encoded.getvalue(), max_pixels=1000)
