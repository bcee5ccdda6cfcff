"""nvJPEG's batched decoder, called through ctypes: JPEG streams decoded into a tensor we own.

torchvision's ``decode_jpeg(device="cuda")`` decodes on a stream of its own, waits for it on the
host before and after every call, and returns new planar tensors that the caller then copies
into its batch. Here the decode is enqueued on the caller's stream (the prediction reader's) and
writes interleaved RGB straight into the caller's (n, h, w, 3) uint8 tensor; the host waits only
for the previous decode of the same decoder before it reuses nvJPEG's state. (With the H100's
JPEG engines the call itself still returns only when the decode is nearly done.) The pixels are
torchvision's, bit for bit.

libnvjpeg ships inside torchvision's CUDA wheels (``torchvision.libs``, what ``pip install
"napari-ssmamba[cuda]"`` brings), with the CUDA toolkit, and as the ``nvidia-nvjpeg`` wheel;
:func:`library` looks in all three.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_ssmamba.errors import BackendUnavailableError, NvJpegError

_BACKEND_DEFAULT, _BACKEND_HARDWARE = 0, 3
_OUTPUT_RGBI = 5  # interleaved RGB
_FLAGS_ENABLE_MEMORY_POOLS = 1 << 1
_STATUS = {
    1: "not initialized",
    2: "invalid parameter",
    3: "bad JPEG",
    4: "JPEG not supported",
    5: "allocator failure",
    6: "execution failed",
    7: "architecture mismatch",
    8: "internal error",
    9: "implementation not supported",
    10: "incomplete bitstream",
}
_MAX_COMPONENT = 4
#: chroma subsamplings nvJPEG's hardware backend decodes (444, 422, 420, 440, 400)
_HARDWARE_SUBSAMPLINGS = {0, 1, 2, 3, 5}


class _Image(ctypes.Structure):  # nvjpegImage_t
    _fields_ = [
        ("channel", ctypes.c_void_p * _MAX_COMPONENT),
        ("pitch", ctypes.c_size_t * _MAX_COMPONENT),
    ]


@dataclass(frozen=True)
class CheckedStreams:
    """JPEG streams checked by :meth:`BatchedJpegDecoder.check`: each a three-component image of
    ``height`` x ``width`` that the decoder's backend decodes, with the arrays nvJPEG reads."""

    streams: list[bytes]
    height: int
    width: int
    backend: str
    data: ctypes.Array
    lengths: ctypes.Array

    def __len__(self) -> int:
        return len(self.streams)


def _candidates() -> list[str]:
    """Where libnvjpeg may be: pip's nvidia wheels, torchvision's libraries, the CUDA toolkit."""
    paths = []
    for entry in sys.path:
        for pattern in (
            "nvidia/cu*/lib/libnvjpeg.so*",
            "nvidia/nvjpeg/lib/libnvjpeg.so*",
            "torchvision.libs/libnvjpeg*.so*",
        ):
            paths += sorted(glob.glob(os.path.join(entry, pattern)), reverse=True)
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            paths += sorted(glob.glob(os.path.join(home, "lib64", "libnvjpeg.so*")), reverse=True)
    found = ctypes.util.find_library("nvjpeg")
    return paths + ([found] if found else [])


@functools.cache
def library() -> ctypes.CDLL:
    """libnvjpeg, loaded once; BackendUnavailableError naming the places tried when it is missing."""
    tried = _candidates()
    for path in tried:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise BackendUnavailableError(
        "libnvjpeg was not found (looked in the nvidia-nvjpeg wheel, torchvision.libs and "
        f"$CUDA_HOME/lib64{': ' + ', '.join(tried) if tried else ''}). Install it with "
        "'pip install nvidia-nvjpeg' (CUDA 13) or 'pip install nvidia-nvjpeg-cu12' (CUDA 12), or "
        "decode with libjpeg (decoder 'libjpeg')."
    )


def _declare(lib: ctypes.CDLL) -> None:
    p, i, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    signatures = {
        "nvjpegCreateEx": [i, p, p, ctypes.c_uint, ctypes.POINTER(p)],
        "nvjpegJpegStateCreate": [p, ctypes.POINTER(p)],
        "nvjpegJpegStateDestroy": [p],
        "nvjpegDestroy": [p],
        "nvjpegGetImageInfo": [
            p,
            ctypes.c_char_p,
            size,
            ctypes.POINTER(i),
            ctypes.POINTER(i),
            ctypes.POINTER(i * _MAX_COMPONENT),
            ctypes.POINTER(i * _MAX_COMPONENT),
        ],
        "nvjpegDecodeBatchedInitialize": [p, p, i, i, i],
        "nvjpegDecodeBatched": [
            p,
            p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(size),
            ctypes.POINTER(_Image),
            p,
        ],
    }
    for name, argtypes in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, i


def _check(status: int, call: str) -> None:
    if status != 0:
        raise NvJpegError(
            f"nvJPEG's {call} failed: {_STATUS.get(status, 'status')} ({status}); decode the "
            "tiles on the CPU instead: ssmamba classify --decoder cpu, or classify_slide(..., "
            "decoder='cpu')"
        )


class BatchedJpegDecoder:
    """Decodes lists of baseline JPEG streams into (n, h, w, 3) uint8 CUDA tensors.

    Uses the GPU's JPEG engines (A100, H100 and later) when it has them, else nvJPEG's CUDA
    decoder; ``backend`` says which. One decode at a time per decoder: :meth:`decode_into` waits
    for the previous one to finish on the GPU before it starts the next. Use :func:`decoder_for`:
    nvJPEG's handle lives as long as the process (as torchvision's does), since releasing it at
    exit can run after CUDA has shut down.
    """

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self._lib = library()
        self._handle, self._state = ctypes.c_void_p(), ctypes.c_void_p()
        with torch.cuda.device(self.device):
            self.backend = "hardware"
            status = self._create(_BACKEND_HARDWARE)
            if status in (7, 9):  # no JPEG engines on this GPU
                self.backend = "cuda"
                status = self._create(_BACKEND_DEFAULT)
            _check(status, "nvjpegCreateEx")
            _check(
                self._lib.nvjpegJpegStateCreate(self._handle, self._state), "nvjpegJpegStateCreate"
            )
        self._batch_size = 0
        self._lock = threading.Lock()
        self._in_flight = None  # (event, what the GPU may still read) of the last decode

    def _create(self, backend: int) -> int:
        """nvjpegCreateEx with memory pools (no cudaMalloc per call), without if refused."""
        status = self._lib.nvjpegCreateEx(
            backend, None, None, _FLAGS_ENABLE_MEMORY_POOLS, self._handle
        )
        if status == 2:
            status = self._lib.nvjpegCreateEx(backend, None, None, 0, self._handle)
        return status

    def image_info(self, stream: bytes) -> tuple[int, int, int, int]:
        """(components, chroma subsampling code, height, width) of one JPEG stream."""
        components, subsampling = ctypes.c_int(), ctypes.c_int()
        widths, heights = (ctypes.c_int * _MAX_COMPONENT)(), (ctypes.c_int * _MAX_COMPONENT)()
        _check(
            self._lib.nvjpegGetImageInfo(
                self._handle, stream, len(stream), components, subsampling, widths, heights
            ),
            "nvjpegGetImageInfo",
        )
        return components.value, subsampling.value, heights[0], widths[0]

    def check(self, streams: list[bytes], height: int, width: int) -> CheckedStreams:
        """``streams`` checked to be three-component JPEG images of exactly ``height`` x ``width``
        px that this decoder's backend decodes (ValueError if not): nvJPEG writes where it is
        told. Checking is host work, which a batch's planner can do before the decode."""
        for index, data in enumerate(streams):
            components, subsampling, h, w = self.image_info(data)
            if (components, h, w) != (3, height, width) or (
                self.backend == "hardware" and subsampling not in _HARDWARE_SUBSAMPLINGS
            ):
                raise ValueError(
                    f"JPEG stream {index} is {components} components of {h} x {w} px (subsampling "
                    f"code {subsampling}); this decoder takes 3 components of {height} x {width}"
                )
        n = len(streams)
        return CheckedStreams(
            streams,
            height,
            width,
            self.backend,
            (ctypes.c_char_p * n)(*streams),
            (ctypes.c_size_t * n)(*map(len, streams)),
        )

    def decode_into(
        self,
        streams: list[bytes] | CheckedStreams,
        out,
        stream,
        starting: Callable[[], None] | None = None,
    ) -> None:
        """Enqueue the decode of ``streams`` into ``out`` ((n, h, w, 3) uint8 on the device) on
        ``stream`` (a ``torch.cuda.Stream``) and return; ``out`` is ready when ``stream`` is.

        Streams are checked (:meth:`check`) unless they come checked for ``out``'s size.
        ``starting()``, if given, is called just before nvJPEG's call, which holds this thread
        until the tiles are nearly decoded but lets go of the interpreter.
        """
        import torch

        n = len(streams)
        if out.dtype != torch.uint8 or out.dim() != 4 or out.shape[0] != n or out.shape[3] != 3:
            raise ValueError(
                f"out must be ({n}, h, w, 3) uint8, not {tuple(out.shape)} {out.dtype}"
            )
        if not out.is_contiguous() or out.device != self.device:
            raise ValueError(f"out must be a contiguous tensor on {self.device}")
        if n == 0:
            return
        height, width = out.shape[1:3]
        fits = isinstance(streams, CheckedStreams) and (
            (streams.height, streams.width, streams.backend) == (height, width, self.backend)
        )
        if not fits:
            streams = self.check(list(getattr(streams, "streams", streams)), height, width)
        images = (_Image * n)()
        # per image: its first channel's pointer and pitch (two uint64 of _Image's eight)
        fields = np.frombuffer(images, dtype=np.uint64).reshape(n, 2 * _MAX_COMPONENT)
        fields[:, 0] = out.data_ptr() + np.arange(n, dtype=np.uint64) * (height * width * 3)
        fields[:, _MAX_COMPONENT] = width * 3
        with self._lock, torch.cuda.device(self.device):
            if self._in_flight is not None:
                self._in_flight[0].synchronize()  # nvJPEG's state is not ours until then
            # nor is out, maybe memory that the stream's earlier kernels still read: we do not
            # rely on how nvJPEG's hardware path orders its writes against them (the wait is
            # short: that work is the previous batch's gather)
            earlier = torch.cuda.Event()
            earlier.record(stream)
            earlier.synchronize()
            if n != self._batch_size:
                _check(
                    self._lib.nvjpegDecodeBatchedInitialize(
                        self._handle, self._state, n, 1, _OUTPUT_RGBI
                    ),
                    "nvjpegDecodeBatchedInitialize",
                )
                self._batch_size = n
            if starting is not None:
                starting()
            _check(
                self._lib.nvjpegDecodeBatched(
                    self._handle,
                    self._state,
                    streams.data,
                    streams.lengths,
                    images,
                    stream.cuda_stream,
                ),
                "nvjpegDecodeBatched",
            )
            done = torch.cuda.Event()
            done.record(stream)
            self._in_flight = (done, (streams, images))


def decoder_for(device) -> BatchedJpegDecoder:
    """The process's decoder for a CUDA device, created on first use."""
    import torch

    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _decoder(index)


@functools.cache
def _decoder(index: int) -> BatchedJpegDecoder:
    return BatchedJpegDecoder(f"cuda:{index}")
