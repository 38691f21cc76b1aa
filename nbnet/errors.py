"""The exception types nbnet raises on bad input, so callers can catch nbnet's own errors."""


class NbnetError(Exception):
    """Base class of every error nbnet raises on purpose."""


class DatasetError(NbnetError):
    """A dataset could not be found, read or verified."""


class ShapeError(NbnetError, ValueError):
    """An array or layer received a shape it cannot work with."""


class ModelFileError(NbnetError):
    """A model file is missing, truncated, corrupt, foreign or from a newer nbnet."""


class ExportError(NbnetError):
    """A model cannot be exported to ONNX, or the export failed verification."""


class TrainingInterrupted(NbnetError):
    """fit stopped after a step because a stop was requested (SIGINT/SIGTERM in the CLI)."""

    def __init__(self, message, signal_number=None):
        super().__init__(message)
        self.signal_number = signal_number


class TrainingDiverged(NbnetError):
    """The loss or a gradient became NaN or Inf; the weights are those of the last good step."""


class ResourceError(NbnetError):
    """A batch or model needs more memory than the machine has available."""
