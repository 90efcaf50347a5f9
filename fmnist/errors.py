"""The pipeline's expected failures. A stage reports any of them as one clear line and exits 1."""


class PipelineError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class DataError(PipelineError, ValueError):
    """Raw or prepared data are not what the pipeline expects."""


class ParamError(PipelineError, ValueError):
    """params.yaml (or a -S override) holds a value the pipeline can't use."""


class TrainingDiverged(PipelineError, RuntimeError):
    """The training loss became NaN or infinite."""
