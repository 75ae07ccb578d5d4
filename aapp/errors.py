"""Domain errors. The CLI turns any AappError into one line on stderr and exit code 1."""


class AappError(Exception):
    """A problem the user can fix: bad input, a missing model, a mismatched file."""


class InputError(AappError):
    """Malformed or unreadable user input (prompt files, generation files, options)."""


class ModelError(AappError):
    """A model that cannot be found, fetched, verified or adapted."""


class CalibrationError(AappError):
    """A calibration file that is missing, malformed or made for another model."""
