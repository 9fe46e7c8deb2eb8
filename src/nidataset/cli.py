"""The ``nidataset`` command (also ``python -m nidataset``).

Exit status: 0 when every output is written, 1 when some files failed (each is named on stderr with its
reason; the others are written), 2 for usage errors, 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: How long to try to reach a Dask scheduler before giving up.
_SCHEDULER_TIMEOUT = "8s"

_EXAMPLES = """\
examples:
  nidataset resample scans/patient_001.nii.gz resampled/ --size 224 224 128
  nidataset resample scans/ resampled/ --size 224 224 128 --workers 2
  nidataset resample scans/ resampled/ --size 128 128 128 --mode folder --skip-existing
  nidataset resample scans/ resampled/ --size 224 224 128 --scheduler tcp://10.0.0.5:8786
  nidataset resample masks/ resampled/ --size 224 224 128 --interpolation label --align center
  nidataset resample scans/ small/ --size 64 64 32 --antialias --preview
  nidataset resample s3://bucket/scans/ s3://bucket/resampled/ --size 224 224 128 --workers 2
  nidataset resample s3://bucket/scans/ s3://bucket/resampled/ --size 224 224 128 \\
      --scheduler tcp://10.0.0.5:8786 --storage-option endpoint_url=https://s3.example.org

A folder INPUT resamples every *.nii.gz directly inside it. With --mode case (the default for a
folder) each result goes to OUTPUT/<PREFIX>/<PREFIX>_resampled.nii.gz; with --mode folder (the default
for a file) to OUTPUT/<PREFIX>_resampled.nii.gz. Outputs appear only when complete, so a run that was
killed is finished by running it again with --skip-existing.

INPUT and OUTPUT may be URLs (pip install 'nidataset[cloud]'): s3://, gs://, az://, and https:// for
an input file. A URL ending in .nii.gz is a file; any other (or one ending in a slash) is a folder
(a prefix of keys), whose *.nii.gz objects directly under it are the inputs. Endpoints and
credentials come from --storage-option KEY=VALUE (VALUE read as JSON when it is JSON: anon=true),
fsspec's configuration (FSSPEC_S3_ENDPOINT_URL=...) or the store's usual ones (AWS_PROFILE, ...).

exit status: 0 all written, 1 some files failed (each named on stderr), 2 usage error,
130 interrupted (what was finished stays; --skip-existing resumes)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE as JSON if it is JSON (``true``, ``5``, ``{...}``), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:  # not echoed: it may be a secret
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {len(text)} characters without '=' or KEY")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _get_parser() -> argparse.ArgumentParser:
    from . import __version__
    from ._options import ALIGNS, INTERPOLATIONS, SAVING_MODES

    parser = argparse.ArgumentParser(
        prog="nidataset",
        description="Resample 3D NIfTI volumes (.nii.gz) to a fixed array size, keeping the field of view.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"nidataset {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    resample = commands.add_parser(
        "resample",
        help="resample a .nii.gz file or every .nii.gz in a folder",
        description="Resample a .nii.gz volume, or every .nii.gz directly in a folder, with cubic B-splines.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    resample.add_argument("input", metavar="INPUT", help="a .nii.gz file or a folder of them (or a URL)")
    resample.add_argument(
        "output", metavar="OUTPUT", help="folder for the results (created if needed), or a URL's prefix"
    )
    resample.add_argument(
        "--size", nargs=3, type=_positive_int, required=True, metavar=("X", "Y", "Z"), help="output voxels"
    )
    resample.add_argument(
        "--mode", choices=SAVING_MODES, help="a folder per volume, or all in OUTPUT (see below)"
    )
    resample.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="files computed at once: local processes, threads for URLs (1; with URLs, three times as "
        "many may be under way, the others opening inputs or ending uploads)",
    )
    resample.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="threads per file (default: every core, or 1 with --workers or --scheduler)",
    )
    resample.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster of this scheduler")
    resample.add_argument("--skip-existing", action="store_true", help="keep existing outputs; do the rest")
    resample.add_argument(
        "--interpolation",
        choices=tuple(INTERPOLATIONS),
        default="bspline",
        help="bspline (default), linear, nearest, or label for segmentation masks",
    )
    resample.add_argument(
        "--antialias", action="store_true", help="smooth shrinking axes first (no aliasing)"
    )
    resample.add_argument(
        "--align",
        choices=ALIGNS,
        default="origin",
        help="keep the first voxel (default) or centre",
    )
    resample.add_argument(
        "--preview", action="store_true", help="also write <PREFIX>_preview.png beside each output"
    )
    resample.add_argument(
        "--debug",
        action="store_true",
        help="print the written path (file) or a completion line (folder), and each output kept",
    )
    resample.add_argument(
        "--storage-option",
        type=_storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the URLs' file system (fsspec storage_options): endpoint_url=...; repeatable",
    )
    resample.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    resample.add_argument(
        "-v", "--verbose", action="store_true", help="the library's log lines (files resampled, kept, ...)"
    )
    resample.set_defaults(command_parser=resample)  # reports usage errors of the command with its own usage

    preview = commands.add_parser(
        "preview",
        help="draw the mid-planes of a volume and of its resampled version side by side",
        description="Draw the axial, coronal and sagittal mid-planes of both volumes in world millimetres,\n"
        "with the subject's directions on their edges, titled with file name, shape and spacing\n"
        "(needs matplotlib).",
        epilog="example:\n  nidataset preview scans/ct.nii.gz resampled/ct_resampled.nii.gz -o ct.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    preview.add_argument("original", metavar="ORIGINAL", help="the input volume (.nii.gz, or a URL)")
    preview.add_argument("resampled", metavar="RESAMPLED", help="its resampled version (.nii.gz, or a URL)")
    preview.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PICTURE",
        help="the picture to write: .png, .pdf, .svg or .jpg",
    )
    preview.add_argument(
        "--storage-option",
        type=_storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the URLs' file system, as for resample; repeatable",
    )
    preview.set_defaults(command_parser=preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``nidataset`` command line.

    Ctrl-C ends it with status 130 and one line saying what is complete. Called from the main thread,
    it takes SIGINT itself while it runs (so that an interrupt Python would discard, raised in a weakref
    callback or ``__del__``, still ends the command) and hides the tracebacks of such discarded
    interrupts; the handler and ``sys.unraisablehook`` are put back when it returns. From another
    thread it changes neither. Run as the program (`argv` None), it ignores Ctrl-C once it is done:
    what is left is the interpreter's exit.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments, without the program's name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 all written, 1 some files failed (each named on stderr), 130 interrupted.

    Raises
    ------
    SystemExit
        As argparse does: status 2 on a usage error (the message on stderr), 0 after ``--help`` or
        ``--version``.

    Examples
    --------
    >>> import os, tempfile
    >>> import nibabel as nib
    >>> import numpy as np
    >>> from nidataset.cli import main
    >>> folder = tempfile.mkdtemp()
    >>> scan = os.path.join(folder, "scan.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((20, 20, 10), np.int16), np.eye(4)), scan)
    >>> main(["resample", scan, os.path.join(folder, "out"), "--size", "10", "10", "5"])
    0
    >>> os.listdir(os.path.join(folder, "out"))
    ['scan_resampled.nii.gz']
    """
    args = None
    before: dict[str, tuple[int, int] | None] = {}
    interrupts: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        interrupts.append(signum)
        raise KeyboardInterrupt

    from ._runner import quiet_interrupts

    handler = hook = None
    if threading.current_thread() is threading.main_thread():  # where Python takes signals
        handler = signal.signal(signal.SIGINT, interrupt)
        hook, sys.unraisablehook = sys.unraisablehook, quiet_interrupts
    try:
        args = _get_parser().parse_args(argv)
        _read_file_urls(args)
        if args.command == "preview":
            status = _preview(args, args.command_parser)
        else:
            before = _stamps(args)
            status = _resample(args, args.command_parser, before)
        if interrupts:  # an interrupt was discarded where Python cannot raise it: the command still stops
            raise KeyboardInterrupt
        return status
    except KeyboardInterrupt:
        # Outputs appear only when complete, and temporary files go as the work unwinds. Counting them
        # may ask a store again, which may not answer: another Ctrl-C cuts the count short.
        report = _INTERRUPTED if args is None or args.command != "resample" else _UNCOUNTED
        try:
            report = _interrupted(args, before)
        except KeyboardInterrupt:
            pass
        finally:
            if handler is not None:  # no third: the report is printed whole
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(report, file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if hook is not None:
            sys.unraisablehook = hook
        if handler is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN if argv is None else handler)


def _stamps(args: argparse.Namespace) -> dict[str, tuple[int, int] | None]:
    """Map each output the command would write to its (inode, mtime), or None where there is none yet.

    The outputs are the library's (:func:`~nidataset._runner.output_folder`): inputs that are outputs of
    other inputs (OUTPUT is INPUT) are left out, and so are inputs whose name cannot name a case folder.
    An input folder that cannot be listed gives nothing here: the command reports it.
    """
    from ._nifti import SUFFIX, output_name
    from ._paths import is_url, join
    from ._runner import list_inputs, output_folder, without_outputs

    storage = _storage(args)
    mode = args.mode or ("case" if _is_folder(args.input) else "folder")

    def target(path: str) -> str:
        return join(output_folder(args.output, mode, path), output_name(path))

    try:
        inputs = list_inputs(args.input, SUFFIX, storage) if _is_folder(args.input) else [args.input]
        remote = storage.stamps(args.output) if is_url(args.output) else {}
    except (OSError, ImportError, ValueError):
        return {}
    stamps: dict[str, Any] = {}
    for path in without_outputs(target, inputs):
        try:
            output = target(path)
        except ValueError:  # reported when that file runs
            continue
        if is_url(output):
            stamps[output] = remote.get(output)
            continue
        try:
            info = os.stat(output)
            stamps[output] = (info.st_ino, info.st_mtime_ns)
        except OSError:
            stamps[output] = None
    return stamps


def _read_file_urls(args: argparse.Namespace) -> None:
    """Put the local path a file:// URL names in its place among the arguments (a usage error if none)."""
    from ._paths import local_path

    for name in ("input", "output", "original", "resampled"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            try:
                setattr(args, name, local_path(value))
            except ValueError as err:
                args.command_parser.error(str(err))


def _storage(args: argparse.Namespace) -> Any:
    """Return the Storage of the command's --storage-option values."""
    from ._storage import Storage

    return Storage.of(dict(args.storage_option) or None)


def _is_folder(path: str) -> bool:
    """Whether a path is a folder: a local folder, or a URL ending in a slash or not in .nii.gz (a prefix)."""
    from ._nifti import SUFFIX
    from ._paths import ends_in_slash, is_url, name_of

    if is_url(path):  # a prefix given with its slash is a folder, whatever its name ends in
        return ends_in_slash(path) or not name_of(path).endswith(SUFFIX)
    return os.path.isdir(path)


def _names_input(err: OSError, given: str) -> bool:
    """Whether `err` is about the INPUT `given` (the folder, the prefix or its bucket), not the output."""
    from ._paths import is_url

    where = str(err.filename or "")
    if not where:  # the listing of a local folder, which names it in its message only
        return True
    if not is_url(given):
        where, given = os.path.abspath(where), os.path.abspath(given)
    where, given = where.rstrip("/"), given.rstrip("/")
    return where == given or given.startswith(where + "/")


_INTERRUPTED = "nidataset: interrupted; nothing partial was left"
_UNCOUNTED = f"{_INTERRUPTED}; run it again with --skip-existing to finish the rest"


def _interrupted(args: argparse.Namespace | None, before: dict[str, tuple[int, int] | None]) -> str:
    """Say what an interrupted command finished, and how to finish the rest."""
    if args is None or args.command != "resample" or not before:
        return _INTERRUPTED
    after = _stamps(args)
    if not after:  # the folder or the store could not be listed again
        return _UNCOUNTED
    present = [target for target, stamp in after.items() if stamp is not None]
    new = sum(after[target] != before.get(target) for target in present)
    return (
        f"nidataset: interrupted; {new} files written by this run, {len(present)} of {len(after)} outputs "
        "complete (none partial); run it again with --skip-existing to finish the rest"
    )


def _resample(
    args: argparse.Namespace, command: argparse.ArgumentParser, before: dict[str, tuple[int, int] | None]
) -> int:
    from ._nifti import SUFFIX
    from ._options import check_installed, check_options
    from ._paths import is_url, name_of

    if not is_url(args.input) and not os.path.lexists(args.input):
        command.error(f"INPUT '{args.input}' does not exist")
    if args.workers > 1 and args.scheduler:
        command.error("give --workers or --scheduler, not both")
    if not _is_folder(args.input) and (args.workers > 1 or args.scheduler):
        command.error("--workers and --scheduler share out the files of a folder; INPUT is one file")
    if not _is_folder(args.output) and name_of(args.output).endswith(SUFFIX):
        command.error(
            f"OUTPUT is the folder the results go in, got '{args.output}', which names a file: each result "
            f"is named <PREFIX>_resampled{SUFFIX} (a folder of that name, if it exists, is taken)"
        )
    try:
        check_options(args.interpolation, args.antialias, args.align, args.preview)
        if args.scheduler:
            check_installed("distributed", "--scheduler")
        for url in filter(is_url, (args.input, args.output)):
            _storage(args).filesystem(url)  # fsspec and the protocol's package installed, the options valid
    except ImportError as err:
        command.error(str(err).replace("preview=True", "--preview"))
    except ValueError as err:
        command.error(str(err))
    with _log_to_stderr() if args.verbose else contextlib.nullcontext():
        if _is_folder(args.input):
            status, outputs = _resample_folder(args, command)
        else:
            status, outputs = _resample_file(args, command)
    if args.debug and args.skip_existing:
        now = _stamps(args)
        for path in outputs:
            if before.get(path) is not None and now.get(path) == before[path]:
                print(f"Kept existing output: '{path}'")
    return status


@contextlib.contextmanager
def _log_to_stderr() -> Iterator[None]:
    """Show the library's INFO log lines on stderr while the command runs (the library sets none)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nidataset: %(message)s"))
    logger = logging.getLogger("nidataset")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _one_line(text: str) -> str:
    """Return `text` on one line: line breaks (in a file name, say) written as backslash-n."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _reason(err: BaseException) -> str:
    """Say what went wrong in one line: an OSError's own words and file, without ``[Errno N]``."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + ("" if err.filename is None else f": '{err.filename}'")
    return str(err)


def _options(args: argparse.Namespace) -> dict:
    """Collect the keyword options of resampling() given on the command line."""
    return {
        "interpolation": args.interpolation,
        "antialias": args.antialias,
        "align": args.align,
        "preview": args.preview,
        "threads": args.threads,
        "storage_options": dict(args.storage_option) or None,
    }


def _preview(args: argparse.Namespace, command: argparse.ArgumentParser) -> int:
    from ._nifti import SUFFIX
    from ._options import check_input_file, check_installed
    from ._paths import is_url, name_of

    storage = _storage(args)
    try:
        for path in (args.original, args.resampled):
            if is_url(path):
                storage.check_input(path, SUFFIX)
            else:
                check_input_file(path, SUFFIX)
        check_installed("matplotlib", "preview")
    except (ImportError, ValueError, OSError) as err:
        command.error(_reason(err))
    from ._preview import FORMATS

    if os.path.splitext(args.output)[1].lower() not in FORMATS:
        command.error(
            f"-o must end in one of {', '.join(FORMATS)} (the picture's format), got '{args.output}'"
        )
    folder = os.path.dirname(args.output) or os.curdir
    if not is_url(args.output) and not os.path.isdir(folder):
        command.error(f"the folder of '{args.output}' does not exist")
    from ._nifti import read_mid_planes
    from ._preview import write_preview

    try:
        original = read_mid_planes(args.original, storage)
        resampled = read_mid_planes(args.resampled, storage)
        names = (name_of(args.original), name_of(args.resampled))
        write_preview(original, resampled, args.output, names=names, storage=storage)
    except (ValueError, OSError, MemoryError) as err:
        print(f"nidataset: failed: {_reason(err)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _resample_file(args: argparse.Namespace, command: argparse.ArgumentParser) -> tuple[int, list[str]]:
    from ._nifti import SUFFIX
    from ._paths import name_of, uncompressed_hint
    from ._runner import output_folder
    from .preprocessing import resampling

    if not name_of(args.input).endswith(SUFFIX):
        command.error(
            f"INPUT must be a folder or a '{SUFFIX}' file, got '{args.input}'{uncompressed_hint(args.input)}"
        )
    try:
        folder = output_folder(args.output, args.mode or "folder", args.input)
        output = resampling(
            args.input, folder, args.size, args.debug, **_options(args), skip_existing=args.skip_existing
        )
    except Exception as err:  # as a folder run reports each file: one line, no traceback
        print(_one_line(f"nidataset: failed: {args.input}: {_reason(err)}"), file=sys.stderr)
        return EXIT_FAILED, []
    return EXIT_OK, [output]


def _resample_folder(args: argparse.Namespace, command: argparse.ArgumentParser) -> tuple[int, list[str]]:
    from .preprocessing import DatasetError, resampling_dataset

    executor = client = None
    if args.scheduler:
        import distributed

        failure = None
        try:
            client = distributed.Client(args.scheduler, timeout=_SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as err:  # unreachable, or not an address
            failure = f"cannot connect to the Dask scheduler at '{args.scheduler}': {err}"
        if failure is not None:
            # The half-made Client is closed now, by its finalizer, rather than whenever the garbage
            # collector finds it: there, its close can wait forever for a lock of distributed's that the
            # thread it interrupts holds (a later Client starting, in a process that goes on).
            gc.collect()
            command.error(failure)
        assert client is not None
        executor = client.get_executor()
    try:
        outputs = resampling_dataset(
            args.input,
            args.output,
            args.size,
            saving_mode=args.mode or "case",
            debug=args.debug,
            workers=args.workers,
            executor=executor,
            skip_existing=args.skip_existing,
            progress=not args.quiet,
            **_options(args),
        )
    except DatasetError as err:
        for path, reason in err.failures:
            print(_one_line(f"nidataset: failed: {path}: {_reason(reason)}"), file=sys.stderr)
        total = len(err.failures) + len(err.outputs)
        print(f"nidataset: {len(err.failures)} of {total} files failed", file=sys.stderr)
        return EXIT_FAILED, err.outputs
    except FileNotFoundError as err:
        if _names_input(err, args.input):  # no such folder, or no .nii.gz file in it: before any work
            command.error(_reason(err))
        print(f"nidataset: failed: {_reason(err)}", file=sys.stderr)  # the output's bucket, say
        return EXIT_FAILED, []
    except OSError as err:  # e.g. an output folder that cannot be created, before any file
        print(f"nidataset: failed: {_reason(err)}", file=sys.stderr)
        return EXIT_FAILED, []
    finally:
        if client is not None:
            client.close()
    return EXIT_OK, outputs
