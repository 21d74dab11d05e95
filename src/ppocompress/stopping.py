"""How the command line stops: Ctrl-C and SIGTERM unwind the command to `main`, which
names the signal; processes forked by libraries still die when told to."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading

from ppocompress.errors import Interrupted, stops_unwrapped

REDELIVERY_DELAY_S = 0.05  # long enough for the code that ignored a stop to return


@contextlib.contextmanager
def stopped_by_signals():
    """Ctrl-C and SIGTERM raise Interrupted for the command's duration: the stack unwinds
    (staging folders and locks are cleaned up on the way) to main, which names the signal.
    Not KeyboardInterrupt, which typer turns into a bare exit code. A signal that lands in
    code whose exceptions Python ignores (a weakref callback during an import, a __del__)
    would be lost, so it is delivered again from there; one that an extension wraps in its
    own error is unwrapped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame) -> None:
        raise Interrupted(number)

    def deliver_again(unraisable) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            # From another thread, a moment later: a signal raised here would be handled, and ignored, here.
            threading.Timer(REDELIVERY_DELAY_S, os.kill, (os.getpid(), unraisable.exc_value.signal_number)).start()
        else:
            previous_hook(unraisable)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, deliver_again
    _forked_children_stop_as_told()
    try:
        with stops_unwrapped():
            yield
    finally:
        sys.unraisablehook = previous_hook
        for number, handler in previous.items():
            signal.signal(number, handler)


@functools.cache  # once: a hook cannot be unregistered
def _forked_children_stop_as_told() -> None:
    """A process a library forks from this one gets the signals' default handlers back. NNCF's
    and OpenVINO's telemetry send from a forked child and terminate it after a timeout; with
    the handler above inherited, SIGTERM would only raise where the child runs Python, never
    in the DNS lookup it blocks in offline, and the command would wait for it at exit forever."""
    os.register_at_fork(after_in_child=_default_stop_signals)


def _default_stop_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
