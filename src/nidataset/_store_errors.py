"""What a store's failures mean: each is raised again as an OSError naming the URL, with its errno.

FileNotFoundError (no such bucket or key), PermissionError (refused credentials), ConnectionError (an
endpoint that does not answer, or stops answering), OSError (EIO) for the rest. What the store said is
read from the exception's chain (a client may wrap it) and from S3's error codes.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

__all__ = ["credentials_refused", "failures", "one_line", "translated"]


#: Words in the names of the exceptions that mean the endpoint cannot be reached (botocore, aiohttp,
#: azure-core's ServiceRequestError and ServiceResponseError...).
_UNREACHABLE = (
    "Connect",
    "Connection",
    "Timeout",
    "ServerDisconnected",
    "EndpointConnection",
    "ServiceRequestError",
    "ServiceResponseError",
    "TransportError",  # google-auth's: its token endpoint or metadata server did not answer
    # An answer cut short: aiohttp's ClientPayloadError, botocore's ResponseStreamingError and
    # IncompleteReadError, http.client's IncompleteRead.
    "ClientPayloadError",
    "ResponseStreamingError",
    "IncompleteRead",
)
#: S3's error codes, as s3fs leaves them in its messages, for refused credentials.
_REFUSED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken")
#: S3's error codes for requests refused whatever they ask: the credentials (or the clock) are wrong.
_UNSIGNABLE = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "RequestTimeTooSkewed",
)
#: Names of the exceptions of refused or missing credentials: google-auth's, azure-core's, botocore's.
_REFUSED_KINDS = ("RefreshError", "DefaultCredentialsError", "ClientAuthenticationError", "NoCredentials")


@contextlib.contextmanager
def failures(url: str, doing: str) -> Iterator[None]:
    """Raise what a store raises while `doing` something to `url` as an OSError naming `url`."""
    try:
        yield
    except (ImportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:
        raise translated(err, url, doing) from err


def translated(err: Exception, url: str, doing: str) -> OSError:
    # What the store said may lie under the client's own wrapping (adlfs: "Failed to upload block" as a
    # RuntimeError from azure-core's error), so the exceptions it was raised from count too.
    chain = _chain(err)
    names = " ".join(kind.__name__ for raised in chain for kind in type(raised).__mro__)
    statuses = {_status(raised) for raised in chain}
    text = one_line(err)
    if isinstance(err, OSError) and err.filename == url:
        return err  # already said
    if isinstance(err, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        what = "bucket" if "NoSuchBucket" in text or "bucket does not exist" in text.lower() else "object"
        said = f" ({text})" if " " in text else ""  # the server's words, not the path again
        return FileNotFoundError(errno.ENOENT, f"no such {what}{said}", url)
    unreachable = any(isinstance(raised, (ConnectionError, TimeoutError)) for raised in chain) or any(
        word in names for word in _UNREACHABLE
    )  # (also credentials that could not be refreshed for want of a connection: their cause says so)
    if not isinstance(err, PermissionError) and unreachable:
        return ConnectionError(
            errno.ECONNREFUSED,
            f"cannot reach the store, or it stopped answering, while {doing} it ({text})",
            url,
        )
    if (
        isinstance(err, PermissionError)
        or any(kind in names for kind in _REFUSED_KINDS)
        or any(code in text for code in _REFUSED)
        or not statuses.isdisjoint((401, 403))
        or text.startswith("Forbidden")  # gcsfs: a 403 as an OSError
    ):
        return PermissionError(errno.EACCES, f"access refused, check the credentials ({text})", url)
    if "pre-condition" in text or "PreconditionFailed" in text:
        return OSError(errno.ESTALE, f"it changed while {doing} it ({text})", url)
    number = err.errno if isinstance(err, OSError) and err.errno else errno.EIO
    return OSError(number, f"{doing} it failed ({type(err).__name__}: {text})", url)


def credentials_refused(err: BaseException) -> bool:
    """Whether the store refused `err`'s request for the credentials themselves, not for what they may do.

    An unknown key, a bad signature, an expired token, a clock too far off, or no credentials found; not
    S3's AccessDenied (a policy).
    """
    for raised in _chain(err):
        if any(word in kind.__name__ for kind in type(raised).__mro__ for word in _REFUSED_KINDS):
            return True  # (botocore's NoCredentialsError...)
        answer = getattr(raised, "response", None)
        code = answer.get("Error", {}).get("Code") if isinstance(answer, dict) else None
        if code in _UNSIGNABLE:
            return True
    return False


def _chain(err: BaseException) -> list[BaseException]:
    """Return `err` and the exceptions it was raised from (``raise ... from``), four at most."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(chain) < 4 and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__
    return chain


def _status(err: BaseException) -> int | None:
    """Return the HTTP status `err` carries, None if none.

    gcsfs's errors carry it as ``code``, azure-core's as ``status_code``, aiohttp's as ``status``.
    """
    for name in ("status_code", "code", "status"):
        value = getattr(err, name, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if lines[0].startswith("Forbidden") and len(lines) > 1:  # gcsfs: the reason of a 403 on the next line
        return f"{lines[0]}: {lines[1]}"
    return lines[0]
