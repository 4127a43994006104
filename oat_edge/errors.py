"""One exception family, so callers (and the CLI) can catch exactly the errors we raise on
bad input and show them as one clear line instead of a traceback."""


class OatEdgeError(Exception):
    """Base class of every error oat-edge raises for bad input or bad files."""


class ModeError(OatEdgeError, ValueError):
    """A (λ, width) mode that the model or bundle cannot run: λ outside [0, 1], NaN, an
    untrained width, an infeasible budget."""


class InputError(OatEdgeError, ValueError):
    """Images with the wrong shape, dtype, range or non-finite values."""


class CheckpointError(OatEdgeError):
    """A checkpoint that is corrupt, foreign (not written by oat-edge) or inconsistent."""


class BundleError(OatEdgeError):
    """A bundle that is incomplete, tampered with, stale or from an unknown schema."""


class ConfigError(OatEdgeError, ValueError):
    """An unknown architecture, dataset, method or attack, or arguments that contradict."""


class DeviceError(OatEdgeError, RuntimeError):
    """The GPU stack (CUDA, TensorRT) failed a call or cannot run here as installed: a failed
    allocation or launch, mismatched TensorRT libraries."""


class DependencyError(ConfigError, ImportError):
    """A package that the requested feature needs is not installed (the message says which and
    how to install it). A ConfigError too, so callers catching that keep working."""


class TrainingError(OatEdgeError, RuntimeError):
    """A training run that cannot go on: the loss or the weights became NaN/inf (diverged)."""


class FallbackWarning(UserWarning):
    """A fallback that changes speed or meaning was taken (e.g. the Python twin of the C++
    runtime extension, random images for a bake's parity check); the message names the cause
    and the fix. Shown once per cause."""
