"""The ``diffprobe`` console command's launcher: Ctrl-C while diffprobe is still importing exits cleanly.

The command's real entry point is :func:`diffprobe.cli.main`, which turns Ctrl-C during a run into exit code 130
and a one-line message. But importing diffprobe (and with it xarray, for the ``ds.dp`` accessor) takes a second
or more on a busy machine, and a Ctrl-C in that window would print an import traceback. This module imports
nothing heavy itself, so it can catch that case too. It lives outside the ``diffprobe`` package because importing
anything inside the package runs the package's ``__init__`` first.
"""
import sys


def main() -> int:
    try:
        from diffprobe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted while starting; nothing was run.\n")
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
