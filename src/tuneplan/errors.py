"""The one error type users see: a clear, one-line message and exit code 2."""


class TuneplanError(ValueError):
    """Bad input or an impossible request, said in one line for the user."""
