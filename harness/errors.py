"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""
from __future__ import annotations

import sys
import traceback
from typing import Callable


class UserError(Exception):
    """Bad input from the user (spec, flag, data file): exit code 2.

    The message names the field or file, the bad value, what is allowed and,
    where there is one, the fix.
    """

    exit_code = 2


class RunFailed(Exception):
    """A run that started but did not finish (a rank died, training raised): exit code 1."""

    exit_code = 1


def exit_code_of(main: Callable[[], int], bug_traceback: bool = False) -> int:
    """Run ``main`` and map what it raises to the exit-code contract, with one line on stderr.

    0 success, 2 bad input, 1 a failed run, 130 interrupted.  ``bug_traceback``: anything else
    prints its traceback and exits 1 (worker processes, whose log is the only witness) instead of
    propagating.
    """
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except RunFailed as e:
        print(f"run failed: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception:
        if not bug_traceback:
            raise
        traceback.print_exc()
        return 1
