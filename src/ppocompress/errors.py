"""The one exception type that means "the user's input is wrong"."""


class UserError(Exception):
    """A problem with what the user gave us (a path, an id, a number).

    The command line prints its message as one line and exits with code 2, so the
    message must name the problem and what to do about it.
    """
