"""What stops a command that is not a bug: the user's input is wrong, or the user stopped it;
and how any error is told in one line."""

import contextlib

MESSAGE_CHARS = 200  # of an exception's message quoted in an error line


class UserError(Exception):
    """A problem with what the user gave us (a path, an id, a number).

    The command line prints its message as one line and exits with code 2, so the
    message must name the problem and what to do about it.
    """


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM: the command line exits 128 + the signal's number (130, 143).
    `resume` is the command that continues the run, when its state was saved."""

    def __init__(self, signal_number: int, resume: str | None = None):
        super().__init__(signal_number)
        self.signal_number, self.resume = signal_number, resume


@contextlib.contextmanager
def stops_unwrapped():
    """Re-raises a stop that an extension module wrapped in its own error as the stop itself:
    a signal that lands while openvino's compiled module initializes comes out as
    `ImportError: initialization failed`, caused by the Interrupted."""
    try:
        yield
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, Interrupted):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from exc


def first_line(exc: BaseException) -> str:
    """An exception's message fit for a one-line error: its first line (cut to MESSAGE_CHARS),
    or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:MESSAGE_CHARS] if lines else type(exc).__name__
