"""The Typer application every command registers on, and `main`: errors become exit codes."""

from __future__ import annotations

import os
import sys

import click
import typer

from ..errors import RunFailed, UserError
from .help_format import PlainHelpGroup

try:  # typer >= 0.2x raises its own vendored click's exceptions, not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(cls=PlainHelpGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings=HELP,
                  help="Fine-tune a pretrained language model for one task: train, evaluate, predict.\n\n"
                       "Start with:  tuneline train examples/reviews/recipe.yaml   (then: tuneline predict runs/reviews "
                       "-t 'Great blender')")
models_app = typer.Typer(cls=PlainHelpGroup, no_args_is_help=True, context_settings=HELP,
                         help="The built-in model catalog.")
app.add_typer(models_app, name="models")
data_app = typer.Typer(cls=PlainHelpGroup, no_args_is_help=True, context_settings=HELP,
                       help="Check task data before training.")
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        print(f"tuneline {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_print_version,
                                          help="print the version and exit")) -> None:
    """Fine-tune a pretrained language model for one task: train, evaluate, predict."""


def quiet_libraries() -> None:
    # Our own progress and messages are enough; the libraries' load reports are noise to a user.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def main() -> None:
    quiet_libraries()
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)  # typer.Exit(code) comes back as a return value without standalone mode
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:
        print(f"failed: {e}", file=sys.stderr)
        sys.exit(1)
    except (click.exceptions.UsageError, _typer_click.UsageError) as e:
        e.show()
        sys.exit(2)
    except (click.exceptions.ClickException, _typer_click.ClickException) as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # the disk or the permissions, outside a run (which explains its own)
        where = f"{e.filename}: " if e.filename else ""
        print(f"failed: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
