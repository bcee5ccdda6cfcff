"""The nvJPEG binding: where it looks for the library, and (on the GPU) what it decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest

from napari_ssmamba.errors import BackendUnavailableError
from napari_ssmamba.inference import nvjpeg


def test_a_missing_library_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(nvjpeg, "_candidates", lambda: ["/nowhere/libnvjpeg.so.13"])
    nvjpeg.library.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="pip install nvidia-nvjpeg") as error:
            nvjpeg.library()
        assert "/nowhere/libnvjpeg.so.13" in str(error.value)
        assert "libjpeg" in str(error.value)  # the other way
    finally:
        nvjpeg.library.cache_clear()


def jpeg_streams(count, height, width, seed=0):
    """``count`` baseline YCbCr 4:2:0 JPEGs of smooth random colour fields, and their pixels as
    PIL decodes them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    streams, pixels = [], []
    for _ in range(count):
        coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        streams.append(buffer.getvalue())
        pixels.append(np.asarray(Image.open(io.BytesIO(streams[-1])).convert("RGB")))
    return streams, np.stack(pixels)


@pytest.mark.gpu
def test_batches_decode_into_the_given_tensor_like_libjpeg():
    import torch

    try:
        import torchvision.io
    except ImportError:
        torchvision = None

    decoder = nvjpeg.decoder_for("cuda")
    stream = torch.cuda.Stream(priority=-1)
    for count in (1, 7, 40):  # a new batch size each time: nvJPEG is set up again
        streams, expected = jpeg_streams(count, 96, 160, seed=count)
        out = torch.zeros((count, 96, 160, 3), dtype=torch.uint8, device="cuda")
        with torch.cuda.stream(stream):
            decoder.decode_into(streams, out, stream)
        stream.synchronize()
        got = out.cpu().numpy()
        # IDCT and chroma upsampling round differently from libjpeg's (2.8 levels on average on
        # these saturated colour fields, H100); a wrong colour space is off by about 50
        assert np.abs(got.astype(int) - expected).mean() < 5, decoder.backend
        if torchvision is not None:  # the same library through torchvision: the same pixels
            data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
            images = torchvision.io.decode_jpeg(data, device="cuda")
            np.testing.assert_array_equal(got, torch.stack(images).permute(0, 2, 3, 1).cpu())


@pytest.mark.gpu
def test_a_stream_of_another_size_is_refused_before_anything_is_written():
    import torch

    decoder = nvjpeg.decoder_for("cuda")
    streams, _ = jpeg_streams(2, 96, 160)
    small, _ = jpeg_streams(1, 64, 64)
    out = torch.zeros((3, 96, 160, 3), dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="stream 2 is 3 components of 64 x 64 px"):
        decoder.decode_into(streams + small, out, torch.cuda.current_stream())
    assert int(out.sum()) == 0
    with pytest.raises(ValueError, match="uint8"):
        decoder.decode_into(streams, out[:2].float(), torch.cuda.current_stream())


@pytest.mark.gpu
def test_streams_checked_ahead_decode_alike_and_are_checked_again_for_another_size():
    import torch

    decoder = nvjpeg.decoder_for("cuda")
    streams, _ = jpeg_streams(5, 96, 160, seed=3)
    checked = decoder.check(streams, 96, 160)  # what a batch's planner does
    outs = [torch.zeros((5, 96, 160, 3), dtype=torch.uint8, device="cuda") for _ in range(2)]
    decoder.decode_into(streams, outs[0], torch.cuda.current_stream())
    decoder.decode_into(checked, outs[1], torch.cuda.current_stream())
    torch.cuda.synchronize()
    assert int(outs[0].sum()) > 0 and torch.equal(outs[0], outs[1])
    smaller = torch.zeros((5, 64, 64, 3), dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="stream 0 is 3 components of 96 x 160 px"):
        decoder.decode_into(checked, smaller, torch.cuda.current_stream())
    assert int(smaller.sum()) == 0
