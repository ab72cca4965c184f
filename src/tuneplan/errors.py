"""The one error type users see: a clear, one-line message and exit code 2."""


class TuneplanError(ValueError):
    """Bad input or an impossible request, said in one line for the user."""


class TuneplanWarning(UserWarning):
    """Something the Python API computed anyway but a user should know (the CLI refuses it),
    e.g. a sequence longer than the model's context; `warnings.simplefilter("error",
    TuneplanWarning)` turns it into an error."""
