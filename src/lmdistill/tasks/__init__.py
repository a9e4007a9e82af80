"""Task kinds. `build_task(cfg)` returns the Task subclass instance for `cfg.kind`."""

from __future__ import annotations

from pathlib import Path

from lmdistill.config import TaskConfig
from lmdistill.tasks.base import Task


def build_task(cfg: TaskConfig, search_dirs: list[Path] | None = None) -> Task:
    if cfg.kind == "classification":
        from lmdistill.tasks.classification import ClassificationTask as cls
    elif cfg.kind == "token-classification":
        from lmdistill.tasks.token_classification import TokenClassificationTask as cls
    elif cfg.kind == "question-answering":
        from lmdistill.tasks.question_answering import QuestionAnsweringTask as cls
    elif cfg.kind == "prompt-classification":
        from lmdistill.tasks.prompt_classification import PromptClassificationTask as cls
    else:
        from lmdistill.tasks.language_modeling import LanguageModelingTask as cls
    return cls(cfg, search_dirs)


__all__ = ["Task", "build_task"]
