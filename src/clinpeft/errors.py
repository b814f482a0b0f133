"""The one exception type a user sees as a single line: what is wrong, where, and how to fix it."""

import re

# a cell shown in a message: short, and made of label/id characters only (no spaces: free text never qualifies)
_SHOWABLE = re.compile(r"[A-Za-z0-9_.:;+/,-]{1,40}")  # ";": a code list joined wrongly is named


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


class Stopped(BaseException):
    """SIGTERM outside training (the CLI installs the handler): raised wherever the process is, so every `finally`
    and cleanup runs (OUT.partial/ of a short job, the Arrow caches of a pretraining's tokenisation) and the CLI
    prints one line and exits 128 + signum. A BaseException, not a ClinpeftError: code that catches a failed
    experiment cell or sweep trial (Exception) must not swallow it and go on to the next."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def shown(value) -> str:
    """A label or id cell as a message may show it: repr'd when short and label-like, else only its length.
    Note text that slid into a label column (an unquoted comma) is never echoed: not to stderr, not to
    *.failed.json, not to a sweep's journal."""
    text = "" if value is None else str(value)
    if _SHOWABLE.fullmatch(text.strip()):
        return repr(text.strip())
    return f"(a value of {len(text)} characters that looks like free text, not shown)"
