"""What stops a command that is not a bug: the user's input is wrong, or the user stopped it."""


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
