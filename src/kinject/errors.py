"""User errors: one line on stderr, exit code 2, no traceback (see cli.main)."""


class UserError(Exception):
    """A problem with the user's input (file, config, path, request), not a bug.

    The message must be one line saying what is wrong, where, and how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
