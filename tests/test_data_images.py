"""Image decoding (modes, EXIF, errors, pixel limit) and model-input resizing."""

import io

import numpy as np
import pytest
from PIL import Image

from dpiqa_jax.data import images


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def gradient(width: int = 32, height: int = 24) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    pixels = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                             np.broadcast_to(y, (height, width, 1)),
                             np.full((height, width, 1), 90, np.float32)], axis=2)
    return Image.fromarray(pixels.astype(np.uint8))


def test_path_and_bytes_decode_identically(tmp_path):
    data = encode(gradient(), "PNG")
    (tmp_path / "g.png").write_bytes(data)
    from_path = images.load_rgb(tmp_path / "g.png")
    from_bytes = images.load_rgb(data)
    assert from_path.mode == from_bytes.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(from_path), np.asarray(gradient()))
    np.testing.assert_array_equal(np.asarray(from_path), np.asarray(from_bytes))


def test_exif_orientation_is_applied():
    img = gradient(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display.
    decoded = images.load_rgb(encode(img, "JPEG", exif=exif, quality=95))
    assert decoded.size == (10, 30)
    expected = img.transpose(Image.Transpose.ROTATE_270)
    assert np.abs(np.asarray(decoded, np.int16) - np.asarray(expected, np.int16)).mean() < 4


def test_grey_is_replicated_to_rgb():
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, mode="L")
    rgb = np.asarray(images.load_rgb(encode(grey, "PNG")))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], np.asarray(grey))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 0, 0, 0)      # Fully transparent: white.
    rgba[0, 1] = (200, 0, 0, 255)    # Opaque: unchanged.
    rgba[1, 0] = (0, 0, 0, 128)      # Half black over white: grey ~127.
    img = Image.fromarray(rgba, mode="RGBA").convert(mode)
    rgb = np.asarray(images.load_rgb(encode(img, "PNG")), np.int16)
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    opaque = np.asarray(img.convert("RGBA"))[0, 1, :3]
    assert tuple(rgb[0, 1]) == tuple(opaque)
    assert np.all(np.abs(rgb[1, 0] - 127) <= 1)


def test_palette_with_transparency_is_composited_on_white():
    palette_img = Image.new("P", (2, 1))
    palette_img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette_img.putdata([0, 1])
    data = encode(palette_img, "PNG", transparency=0)
    rgb = np.asarray(images.load_rgb(data))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[0, 1]) == (10, 200, 30)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # Pure red in CMYK.
    rgb = images.load_rgb(encode(cmyk, "JPEG", quality=100))
    assert rgb.mode == "RGB"
    red = np.asarray(rgb, np.int16)[0, 0]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


def test_sixteen_bit_grey_keeps_the_top_eight_bits():
    values = np.array([[0, 0x00FF, 0x0100, 0x1234], [0x7FFF, 0x8000, 0xFF00, 0xFFFF]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    rgb = np.asarray(images.load_rgb(encode(img, "PNG")))
    np.testing.assert_array_equal(rgb[..., 0], values >> 8)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_float_images_are_rejected_with_the_name():
    img = Image.fromarray(np.ones((4, 4), np.float32))
    with pytest.raises(images.ImageDecodeError, match=r"scan\.tif: unsupported pixel format.*'F'"):
        images.load_rgb(encode(img, "TIFF"), name="scan.tif")


def test_undecodable_bytes_name_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(images.ImageDecodeError, match="broken.jpg: cannot decode image"):
        images.load_rgb(path)


def test_truncated_jpeg_is_an_error():
    data = encode(gradient(64, 64), "JPEG")
    with pytest.raises(images.ImageDecodeError, match="cut.jpg"):
        images.load_rgb(data[: len(data) // 2], name="cut.jpg")


def test_pixel_limit_rejects_before_decoding():
    data = encode(gradient(100, 50), "PNG")
    with pytest.raises(images.ImageDecodeError, match=r"big.png: 100x50 = 5000 pixels exceeds"):
        images.load_rgb(data, name="big.png", max_pixels=4999)
    assert images.load_rgb(data, max_pixels=5000).size == (100, 50)


def test_squash_matches_pil_bilinear_and_torchvision_scaling():
    img = gradient(64, 40)
    config = images.ImageConfig(height=16, width=24)
    out = images.resize_for_model(img, config)
    reference = np.asarray(img.resize((24, 16), Image.BILINEAR), np.float32) / np.float32(255)
    assert out.shape == (16, 24, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, reference)


def test_image_at_target_size_is_not_resampled():
    img = gradient(24, 16)
    out = images.resize_for_model(img, images.ImageConfig(height=16, width=24))
    np.testing.assert_array_equal(out * 255, np.asarray(img, np.float32))


def test_minus_one_to_one_range():
    img = Image.fromarray(np.array([[[0, 255, 51]]], np.uint8))
    out = images.to_float_array(img, (-1.0, 1.0))
    np.testing.assert_allclose(out[0, 0], [-1.0, 1.0, -0.6], atol=1e-6)


def test_keep_aspect_crop_covers_then_crops_at_the_requested_place():
    img = gradient(80, 40)  # 2:1, to 20x20: scale to 40x20, then crop 20 columns.
    config = images.ImageConfig(height=20, width=20, resize_mode="keep_aspect_crop")
    scaled = np.asarray(img.resize((40, 20), Image.BILINEAR))
    left = np.asarray(images.resize_image(img, config, crop_fraction=(0.5, 0.0)))
    centre = np.asarray(images.resize_image(img, config))
    right = np.asarray(images.resize_image(img, config, crop_fraction=(0.5, 1.0)))
    np.testing.assert_array_equal(left, scaled[:, :20])
    np.testing.assert_array_equal(centre, scaled[:, 10:30])
    np.testing.assert_array_equal(right, scaled[:, 20:])


def test_covering_size_keeps_the_aspect_ratio():
    assert images.covering_size((1024, 768), (512, 512)) == (512, 683)
    assert images.covering_size((300, 600), (200, 100)) == (200, 100)  # Same aspect: exact.
    assert images.covering_size((300, 600), (100, 200)) == (400, 200)
    assert images.covering_size((300, 900), (100, 200)) == (600, 200)


def test_invalid_configs_are_rejected():
    with pytest.raises(ValueError, match="resize_mode"):
        images.ImageConfig(resize_mode="stretch")
    with pytest.raises(ValueError, match="value_range"):
        images.ImageConfig(value_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="crop_fraction"):
        images.resize_image(gradient(), images.ImageConfig(8, 8, "keep_aspect_crop"), (1.5, 0.0))


def test_preprocess_is_decode_then_resize():
    data = encode(gradient(50, 30), "PNG")
    config = images.ImageConfig(height=10, width=12)
    np.testing.assert_array_equal(images.preprocess(data, config),
                                  images.resize_for_model(images.load_rgb(data), config))


def test_messages_name_the_input_never_the_stream_object():
    with pytest.raises(images.ImageDecodeError) as caught:
        images.load_rgb(b"not an image", name="holiday.jpg")
    assert str(caught.value) == ("holiday.jpg: cannot decode image (UnidentifiedImageError: cannot "
                                 "identify image file holiday.jpg)")
    assert images.without_stream_repr(
        "cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>", "a.png") == \
        "cannot identify image file a.png"
