"""The one exception type a user sees as a single line: what is wrong, where, and how to fix it."""


class ClinpeftError(Exception):
    """An error the user can act on. The CLI prints `error: <message>` and exits with status 2.

    Messages name the file / row / config key and say what to do, e.g.
    `tasks/mor/train.csv row 17: empty text; remove the row or fill it in`.
    """


class Interrupted(ClinpeftError):
    """SIGTERM / SIGINT during training, after a checkpoint was written; the CLI exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
