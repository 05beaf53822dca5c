"""Run a parsed command and turn user errors into one ``error:`` line and an exit code.

Both ``deepseek`` (:mod:`deepseek.cli.main`) and ``deepseek-serve`` (:mod:`deepseek.cli.serve_cmd`) end
here; it lives in its own module so that neither command module imports the other (no import cycle).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from deepseek.cli.errors import UsageError


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; user errors print ``error: ...`` and exit with code 2, never a traceback."""
    from deepseek.config import ConfigError
    from deepseek.data.folders import DataPathError
    from deepseek.errors import MissingDependency
    from deepseek.models.weights import PretrainedWeightsError
    from deepseek.registry import RegistryError
    from deepseek.train.checkpoint import CheckpointError, DiskFullError
    from deepseek.train.run_lock import RunDirLockedError
    from deepseek.train.step import NonFiniteLossError

    try:
        return args.fn(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    # only errors about the user's own inputs; any other exception (a FileNotFoundError from inside the
    # framework included) keeps its traceback, so real bugs stay visible
    except (UsageError, RegistryError, CheckpointError, DataPathError, MissingDependency, PretrainedWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunDirLockedError as exc:  # a second writer on one run directory
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk is the environment, not the input: exit 1, one line
        if exc.errno != errno.ENOSPC:
            raise
        detail = exc if isinstance(exc, DiskFullError) else f"disk full ({exc.strerror}) writing {exc.filename}"
        print(f"error: {detail}", file=sys.stderr)
        return 1
    except NonFiniteLossError as exc:  # a training failure, not a usage error: exit 1, one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `deepseek list transforms | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

