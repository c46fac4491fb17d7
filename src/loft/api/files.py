"""A workspace's files (``/v1/workspaces/{name}/files?path=/abs/path``): ``GET`` reads
(the bytes, ``application/octet-stream``), ``PUT`` writes the request body, ``DELETE``
removes. Paths are absolute, inside the workspace; sizes are bounded both ways."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loft.api._rules import FORBID_EXTRA, Int, Str

__all__ = ["FILE_PATH_PATTERN", "MAX_FILE_BYTES", "FileDeleted", "FileWritten"]

#: The largest file read or written in one request (larger ones: a command, or a volume).
MAX_FILE_BYTES = 16 << 20
#: An absolute path without NUL bytes, at most 4096 characters.
FILE_PATH_PATTERN = r"^/[^\x00]{0,4095}$"


@dataclass(frozen=True, slots=True)
class FileWritten:
    """The file written and its size."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    path: Str
    size: Int


@dataclass(frozen=True, slots=True)
class FileDeleted:
    """The file deleted."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    deleted: Str
