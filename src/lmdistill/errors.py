"""User-facing errors. The CLI prints them as one line and exits with status 2."""


class LmdistillError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(LmdistillError):
    """A config key, value or combination is wrong. The message names the key."""


class DataError(LmdistillError):
    """A data file, column or label is wrong. The message names the file or column."""


class TrainingError(LmdistillError):
    """Training diverged or cannot go on (for example a NaN loss). The message names the step."""
