"""The package's exceptions: one base class, each subclass also the matching builtin.

Messages name the file concerned and the fix, so that the GUI and the CLI can show them as they are.
"""

from __future__ import annotations


class SSMambaError(Exception):
    """Base class of every error this package raises on purpose."""


class SlideError(SSMambaError, OSError):
    """A slide cannot be opened or read (unsupported, corrupt, missing MPP where one is needed)."""


class AnnotationError(SSMambaError, ValueError):
    """An annotation file or geometry is malformed and cannot be repaired."""


class CheckpointError(SSMambaError, ValueError):
    """A model checkpoint is unsafe, incomplete, or does not match its model card."""


class BackendUnavailableError(SSMambaError, ImportError):
    """An optional compute backend (mamba-ssm, Triton, CUDA) was asked for but is not installed."""


class TrainingDataError(SSMambaError, ValueError):
    """The data cannot train a model: a source or class without tiles, classes a model lacks."""


class MissingSourceError(SSMambaError, FileNotFoundError):
    """A training data source names a file or folder that does not exist."""


class NvJpegError(SSMambaError, RuntimeError):
    """An nvJPEG call failed while decoding a slide's tiles on the GPU."""


class CancelledError(SSMambaError):
    """A long job was cancelled by the user; whatever it had written stays consistent."""
