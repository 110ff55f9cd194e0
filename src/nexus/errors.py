"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class NexusError(Exception):
    """Bad input or an unusable artifact: the message is shown to the user as is, no traceback."""

    exit_code = 2
