"""Domain errors. The CLI turns any AappError into one line on stderr and exit code 1."""


class AappError(Exception):
    """A problem the user can fix: bad input, a missing model, a mismatched file."""


class InputError(AappError):
    """Malformed or unreadable user input (prompt files, generation files, options)."""


class ModelError(AappError):
    """A model that cannot be found, fetched, verified or adapted."""


class CalibrationError(AappError):
    """A calibration file that is missing, malformed or made for another model."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (aapp.cli turns both into this). Not an AappError: the user stopped
    the run, and the exit code is 128 + the signal. `note` says what was kept, in one line; `kept`
    counts the output rows kept, where a writer kept some."""

    def __init__(self, signum: int, note: str = "", kept: int | None = None):
        super().__init__(signum, note)
        self.signum, self.note, self.kept = signum, note, kept
