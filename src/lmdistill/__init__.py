"""lmdistill: knowledge distillation for Hugging Face language models, with measured reports."""

from lmdistill.errors import ConfigError, DataError, LmdistillError, TrainingError

__version__ = "0.1.0"


def distill(config, resume: bool = False):
    """Run one experiment (a config path, dict or ExperimentConfig). See lmdistill.api.distill."""
    from lmdistill.api import distill as _distill

    return _distill(config, resume=resume)


__all__ = ["ConfigError", "DataError", "LmdistillError", "TrainingError", "distill", "__version__"]
