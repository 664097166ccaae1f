"""The ``edgepack`` command line: parse options, call a stage, format its result. No logic of its own.

Each command group lives in its own module here and registers itself on ``cli``; ``main()`` is the one
place that turns an ``EdgepackError`` into one ``error: ... (hint: ...)`` line on stderr and an exit code.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading

import click

from .. import __version__
from ..errors import EdgepackError, OutputError, Terminated


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgepack")
@click.option("--debug", is_flag=True, envvar="EDGEPACK_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgepack: turn a Hugging Face checkpoint into tested, device-fitted GGUF files.

    \b
    Typical flow:
      edgepack convert ./my-model -o my-model-F16.gguf
      edgepack quantize my-model-F16.gguf -t Q4_K_M -t Q8_0
      edgepack build edgepack.toml -o dist/

    Every command has --help with examples. Errors print one line with a hint; add --debug for a traceback.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _terminate(signum, frame) -> None:
    """SIGTERM -> ``Terminated`` (a KeyboardInterrupt) in the main thread, so it cleans up as Ctrl-C does."""
    signal.signal(signal.SIGTERM, lambda *_: None)  # a second SIGTERM must not interrupt that cleanup
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: list[str]) -> None:
    state: dict = {}  # the group callback records --debug / EDGEPACK_DEBUG here (click parsed both)
    try:
        cli.main(args=args, prog_name="edgepack", standalone_mode=False, obj=state)
    except EdgepackError as exc:
        # "--debug" in args: an error raised while the options themselves were parsed, before the callback ran
        if state.get("debug") or "--debug" in args:
            raise
        # One line, always: the message, then what to do about it.
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        click.echo(f"error: {exc}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt into Abort
        if isinstance(exc.__cause__, Terminated):
            click.echo("terminated", err=True)
            sys.exit(Terminated.exit_code)
        click.echo("aborted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(Terminated.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # the disk filled up in a write no stage wrapped (merge, report, a sidecar): one line
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or state.get("debug") or "--debug" in args:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        click.echo(f"error: disk full{where} (hint: free space or write elsewhere with -o)", err=True)
        sys.exit(OutputError.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


# Command modules register themselves on `cli` when imported.
from . import convert as _convert  # noqa: E402,F401
from . import profiles as _profiles  # noqa: E402,F401
from . import fit as _fit  # noqa: E402,F401
from . import bench as _bench  # noqa: E402,F401
from . import pull as _pull  # noqa: E402,F401
from . import config as _config  # noqa: E402,F401
from . import adapter as _adapter  # noqa: E402,F401
from . import report as _report  # noqa: E402,F401
from . import quantize as _quantize  # noqa: E402,F401
from . import imatrix as _imatrix  # noqa: E402,F401
from . import eval as _eval  # noqa: E402,F401
from . import verify as _verify  # noqa: E402,F401
from . import build as _build  # noqa: E402,F401
