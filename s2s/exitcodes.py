"""Exit codes a scheduler can act on, and the guard every command and job runs under.

==  ======================================================================================
0   done
1   done, but some inputs failed (each listed, last, with its reason); a rerun retries them
2   refused before work: a bad setting, a missing or damaged input or model, unreachable storage
3   busy: another run holds the output's single-writer lease; nothing was done
70  internal error (EX_SOFTWARE): a bug or a failure of the cluster, not of the input
==  ======================================================================================

Whatever the outcome, the last line on stderr is one line that says it; under ``ray job submit``
that line ends the job's status message, next to Ray's "failed with exit code N".
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from s2s import storage
from s2s.config import ConfigError
from s2s.lease import LeaseHeld
from s2s.manifest import ManifestError
from s2s.poison import describe

__all__ = ["OK", "INPUTS_FAILED", "REFUSED", "BUSY", "INTERNAL", "run_guarded"]

OK, INPUTS_FAILED, REFUSED, BUSY, INTERNAL = 0, 1, 2, 3, 70


def run_guarded(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command`` and turn its outcome into an exit code and a last line on stderr."""
    try:
        return command() or OK
    except (ConfigError, storage.StorageError, ManifestError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return REFUSED
    except LeaseHeld as err:  # a scheduler retries later; nothing was written
        print(f"{prog}: busy: {err}", file=sys.stderr)
        return BUSY
    except Exception as err:  # the traceback for whoever debugs it, then the one-line summary
        traceback.print_exc()
        print(f"{prog}: internal error: {describe(err)} (exit {INTERNAL})", file=sys.stderr)
        return INTERNAL
