"""The ``onnxopt`` command group and its error handling."""

from __future__ import annotations

import sys

import click

from onnxopt import __version__
from onnxopt.cli.common import EXIT_CODES_HELP
from onnxopt.errors import EXIT_PASS_FAILED, EXIT_USAGE, OnnxoptError
from onnxopt.runtime import one_line


@click.group(
    help="Optimize ONNX models and prove the result on onnxruntime.\n" + EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "--version", prog_name="onnxopt")
def cli() -> None:
    pass


def _register_commands() -> None:
    from onnxopt.cli import inspect_cmd, optimize, passes_cmd

    cli.add_command(optimize.command, "optimize")
    cli.add_command(passes_cmd.command, "passes")
    cli.add_command(inspect_cmd.command, "inspect")
    from onnxopt.cli import bench, check, compare, profile

    cli.add_command(compare.command, "compare")
    cli.add_command(bench.command, "bench")
    cli.add_command(profile.command, "profile")
    cli.add_command(check.command, "check")


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and a documented exit code for every known failure."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=args, prog_name="onnxopt", standalone_mode=False)
    except OnnxoptError as exc:
        if debug:
            raise
        click.echo(f"onnxopt: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("onnxopt: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("onnxopt: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(
            f"onnxopt: internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
            err=True,
        )
        sys.exit(EXIT_PASS_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
