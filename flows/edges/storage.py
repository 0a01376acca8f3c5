"""Where output files live: a local directory or an object store, through pyarrow.fs.

Every file is replaced whole and atomically: on a local disk it is written to a hidden
temporary name beside it, synced and renamed; on an object store the whole file is sent in
one upload to its final key (a single PUT, or a multipart upload that becomes visible only
when it completes), which is atomic per object, while a rename there would be a copy and a
delete. Readers therefore never see a half-written file, and an object store never holds a
temporary object.

``--output s3://BUCKET/PREFIX`` is an S3 (or S3-compatible) object store. The endpoint,
keys and region come from the ``--s3-*`` settings; without keys the usual credential chain
of the AWS SDK applies. The store is contacted on first use, when the bucket is created if
it is missing; any failure to reach or use it is a :class:`StorageError` whose message is
one line and never contains the secret key.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import posixpath
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import SecretStr

from flows.errors import EXIT_STORAGE, JobError
from flows.failpoints import Failpoints
from flows.settings import StorageSettings

__all__ = ["S3Target", "Storage", "StorageError"]

TMP_SUFFIX = ".tmp"
T = TypeVar("T")
ParquetWrite = Callable[[pa.Table, Any], None]
"""Writes a table as Parquet to a path or a stream (``pyarrow.parquet.write_table``)."""
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})
"""pyarrow filesystem types where a file is an object written by one upload."""

KEYS_HINT = "check --s3-access-key and --s3-secret-key / PARTY_RATES_S3_SECRET_KEY"
DENIED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "UNRECOGNIZED_CLIENT",
    "Forbidden",
)
UNREACHABLE = ("NETWORK_CONNECTION", "curlCode: 7", "Couldn't connect", "Connection refused")


class StorageError(JobError, OSError):
    """The output storage cannot be reached or used. The message is one line, safe to print."""

    exit_code = EXIT_STORAGE


_END_FAILURES: list[str] = []


def end_of_run_failure(err: Exception) -> None:
    """Record a write that failed in a sink's ``close()``.

    Bytewax calls ``close()`` while it drops the dataflow, where an exception would abort
    the process; the rows stay in the last snapshot and the next run writes them. The
    command reports the failure when the dataflow has returned (exit 5).
    """
    text = str(err) if isinstance(err, StorageError) else f"writing the output failed: {err}"
    _END_FAILURES.append(text.splitlines()[0] if text else type(err).__name__)


def take_end_of_run_failures() -> list[str]:
    failures = list(_END_FAILURES)
    _END_FAILURES.clear()
    return failures


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): every dirty page and metadata of one file system, in one call."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int]
    return cast(Callable[[int], int], fn)


_SYNCFS = _syncfs()


def _sync(paths: list[str], root: str) -> None:
    """Make ``paths`` (files or directories, all under ``root``) durable: the file system at
    once where the system can, else each on its own."""
    if not paths:
        return
    if _SYNCFS is not None:
        fd = os.open(root, os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        _fsync_dir(path)  # opening read-only and fsync serves files and directories alike


def is_s3_uri(output: str) -> bool:
    return output[:5].lower() == "s3://"


@dataclass(frozen=True)
class S3Target:
    """An ``s3://BUCKET/PREFIX`` output and how to reach it. Building it makes no request."""

    bucket: str
    prefix: str
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: SecretStr | None = field(default=None, repr=False)
    region: str | None = None
    problem: str | None = None
    """Why these settings cannot work; raised on first use."""

    @classmethod
    def parse(
        cls,
        uri: str,
        *,
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: SecretStr | None = None,
        region: str | None = None,
    ) -> S3Target:
        parts = urlsplit(uri)
        userinfo, _, bucket = parts.netloc.rpartition("@")
        prefix = "/".join(s for s in parts.path.split("/") if s)
        problem = None
        # Never echo the URI in a problem: keys written into it must not be printed.
        if userinfo or parts.query or parts.fragment or not bucket:
            problem = (
                "--output: an object store output is s3://BUCKET/PREFIX; give the endpoint, "
                "keys and region with --s3-endpoint, --s3-access-key, --s3-secret-key "
                "(PARTY_RATES_S3_SECRET_KEY) and --s3-region"
            )
        elif any(s in (".", "..") for s in prefix.split("/")):
            problem = "--output: an object store prefix must not contain . or .. segments"
        elif (access_key is None) != (secret_key is None):
            problem = f"--s3-access-key and --s3-secret-key go together ({KEYS_HINT})"
        elif endpoint:
            split = urlsplit(endpoint if "://" in endpoint else "//" + endpoint)
            if (
                split.scheme not in ("", "http", "https")
                or split.path.strip("/")
                or not split.netloc
            ):
                problem = (
                    f"--s3-endpoint must be HOST:PORT or http(s)://HOST:PORT, got {endpoint!r}"
                )
        return cls(bucket, prefix, endpoint, access_key, secret_key, region, problem)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def root(self) -> str:
        return f"{self.bucket}/{self.prefix}".rstrip("/")

    def filesystem(self) -> pafs.S3FileSystem:
        """The pyarrow filesystem (no request is made yet)."""
        if self.problem:
            raise StorageError(self.problem)
        kwargs: dict[str, Any] = {}
        if self.endpoint:
            split = urlsplit(self.endpoint if "://" in self.endpoint else "//" + self.endpoint)
            kwargs["endpoint_override"] = split.netloc
            kwargs["scheme"] = split.scheme or "https"
        if self.access_key is not None and self.secret_key is not None:
            kwargs["access_key"] = self.access_key
            kwargs["secret_key"] = self.secret_key.get_secret_value()
        # A custom endpoint gets a fixed default region, so the SDK does not go looking for one.
        region = self.region or ("us-east-1" if self.endpoint else None)
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(
            allow_bucket_creation=True,
            allow_delayed_open=True,  # a file smaller than a multipart part is one PUT
            connect_timeout=5,
            **kwargs,
        )

    def open(self) -> pafs.FileSystem:
        """Build the filesystem and make sure the bucket exists (it is created if missing)."""
        fs = self.filesystem()
        info = fs.get_file_info(self.bucket)
        if info.type == pafs.FileType.NotFound:
            try:
                fs.create_dir(self.bucket)
            except OSError:
                # Another host may have created it meanwhile; anything else is raised.
                if fs.get_file_info(self.bucket).type != pafs.FileType.Directory:
                    raise
        elif info.type != pafs.FileType.Directory:
            raise StorageError(f"object store {self.uri}: bucket {self.bucket!r} is not usable")
        return fs

    def describe(self, err: BaseException, action: str = "") -> str:
        """One safe line for a failure of this store."""
        text = str(err).strip().splitlines()
        detail = text[0] if text else type(err).__name__
        secret = self.secret_key.get_secret_value() if self.secret_key is not None else ""
        if secret:
            detail = detail.replace(secret, "***")
        where = f"object store {self.uri}" + (f" at {self.endpoint}" if self.endpoint else "")
        if action:
            where += f": {action}"
        if any(word in detail for word in DENIED):
            return f"{where}: access denied ({KEYS_HINT})"
        if any(word in detail for word in UNREACHABLE):
            return f"{where}: cannot connect (check --s3-endpoint): {detail}"
        return f"{where}: {detail}"


class Storage:
    """An output root on a local or object-store filesystem.

    ``filesystem`` with ``root`` a path in it; or ``root`` alone, a local directory or a
    URI pyarrow knows; or ``s3``, an S3 target that is contacted on first use.
    """

    def __init__(
        self,
        root: str = "",
        filesystem: pafs.FileSystem | None = None,
        *,
        s3: S3Target | None = None,
        failpoints: Failpoints | None = None,
        given: str | None = None,
    ) -> None:
        # Arrow's own allocator keeps memory freed by earlier writes, so a long run's peak
        # grew with its length: the job writes now and then, the system allocator suffices.
        pa.set_memory_pool(pa.system_memory_pool())
        self._lock = threading.Lock()
        self.given = given or (s3.uri if s3 is not None else root)  # the output as given
        self._s3 = s3
        self.failpoints = failpoints or Failpoints()
        self._fs: pafs.FileSystem | None
        if s3 is not None:
            self.uri, self.root = s3.uri, s3.root
            self._fs, self.local, self.object_store = None, False, True
            return
        self.uri = root
        if filesystem is None:
            filesystem, path = (
                pafs.FileSystem.from_uri(root)
                if "://" in root
                else (
                    pafs.LocalFileSystem(),
                    root,
                )
            )
        else:
            path = root
        self.root = path.rstrip("/") or "/"
        self._fs = filesystem
        self.local = isinstance(filesystem, pafs.LocalFileSystem)
        self.object_store = filesystem.type_name in OBJECT_STORES

    @classmethod
    def for_output(cls, settings: StorageSettings, failpoints: Failpoints | None = None) -> Storage:
        """The output storage the settings describe: a local directory or an s3:// URI.

        Makes no request: an object store is reached on first use.
        """
        if not is_s3_uri(settings.output):
            return cls(settings.output, failpoints=failpoints, given=settings.output)
        target = S3Target.parse(
            settings.output,
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
        )
        return cls(s3=target, given=settings.output)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def fs(self) -> pafs.FileSystem:
        """The filesystem; an object store is opened (and its bucket checked) on first use."""
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    s3 = self._s3
                    assert s3 is not None
                    self._fs = self._attempt("", lambda _: s3.open(), opened=False)
        return self._fs

    def _attempt(self, action: str, work: Callable[[Any], T], *, opened: bool = True) -> T:
        """``work(fs)``, an object-store failure turned into a one-line StorageError.

        The StorageError is raised outside the handler, so that it is the root of its chain
        (no ``__context__`` pointing at the SDK's message). Local errors are left as they are.
        """
        fs = self.fs if opened else None
        try:
            return work(fs)
        except StorageError:
            raise
        except OSError as err:
            if not self.object_store or isinstance(err, FileNotFoundError):
                raise
            if self._s3 is not None:
                failure = StorageError(self._s3.describe(err, action))
            else:
                failure = StorageError(f"{self.uri}: {action}: {err}" if action else str(err))
        raise failure

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath) if relpath else self.root

    def exists(self, relpath: str) -> bool:
        full = self.path(relpath)
        return self._attempt(
            f"checking {relpath}", lambda fs: fs.get_file_info(full).type == pafs.FileType.File
        )

    def read_table(self, relpath: str, schema: pa.Schema) -> pa.Table | None:
        """The file read whole, with ``schema``'s columns and types; None if it is absent.

        Read as one Parquet file (not through pyarrow's dataset layer, which is slow to
        import: a scheduled run pays it once per start).
        """
        if self.object_store:  # one GET for the whole (small) file, not a read per range
            data = self.read_bytes(relpath)
            if data is None:
                return None
            table = pq.ParquetFile(pa.BufferReader(data)).read(columns=schema.names)
        else:
            fs, full = self.fs, self.path(relpath)
            if fs.get_file_info(full).type != pafs.FileType.File:
                return None
            with fs.open_input_file(full) as f:
                table = pq.ParquetFile(f).read(columns=schema.names)
        return table if table.schema == schema else table.cast(schema)

    def write_tables(
        self, tables: list[tuple[str, pa.Table]], write: ParquetWrite = pq.write_table
    ) -> None:
        """Replace each file with its table, each atomically, written by ``write``.

        On a local disk every table is written to a temporary name first; once all of them
        are on disk (synced) they are renamed, and the renames synced. The file system is
        synced once for all the files (``syncfs``, where the system has it) rather than
        each file and directory on its own: a run that writes hundreds of small files pays
        a few syncs, not hundreds.
        """
        if not self.local:
            for relpath, table in tables:
                buffer = pa.BufferOutputStream()
                write(table, buffer)  # the whole file exists before anything is sent
                self._put(relpath, buffer.getvalue())
            return
        staged = []
        for relpath, table in tables:
            full = self.path(relpath)
            directory, name = posixpath.split(full)
            tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
            try:
                out = open(tmp, "wb")  # noqa: SIM115 (closed below)
            except FileNotFoundError:  # a new directory: made only then
                os.makedirs(directory, exist_ok=True)
                out = open(tmp, "wb")  # noqa: SIM115
            with out:
                write(table, out)
            staged.append((tmp, full, directory))
        _sync([tmp for tmp, _full, _dir in staged], self.root)  # data before names point at it
        for tmp, full, _directory in staged:
            self.failpoints.reached("before-rename")
            os.replace(tmp, full)
            self.failpoints.reached("after-rename")
        _sync(sorted({directory for _tmp, _full, directory in staged}), self.root)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Replace a small file atomically (manifests)."""
        if not self.local:
            self._put(relpath, data)
            return
        full = self.path(relpath)
        directory, name = posixpath.split(full)
        self.fs.create_dir(directory, recursive=True)
        tmp = posixpath.join(directory, f".{name}{TMP_SUFFIX}")
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, full)
        _fsync_dir(directory)

    def _put(self, relpath: str, data: bytes | pa.Buffer) -> None:
        """Send a whole file to its final name in one write (one PUT on an object store)."""
        full = self.path(relpath)

        def put(fs: pafs.FileSystem) -> None:
            if not self.object_store:  # an object store has no directories (nor markers)
                fs.create_dir(posixpath.dirname(full), recursive=True)
            with fs.open_output_stream(full) as stream:
                stream.write(data)

        self._attempt(f"writing {relpath}", put)

    def read_bytes(self, relpath: str) -> bytes | None:
        full = self.path(relpath)

        def read(fs: pafs.FileSystem) -> bytes | None:
            if fs.get_file_info(full).type != pafs.FileType.File:
                return None
            with fs.open_input_stream(full) as f:
                data: bytes = f.read()
                return data

        return self._attempt(f"reading {relpath}", read)

    def list_files(self, reldir: str) -> Iterable[str]:
        """Relative paths of the files under ``reldir``, recursively."""
        selector = pafs.FileSelector(self.path(reldir), recursive=True, allow_not_found=True)
        infos = self._attempt(f"listing {reldir or '/'}", lambda fs: fs.get_file_info(selector))
        for info in infos:
            if info.type == pafs.FileType.File:
                yield posixpath.relpath(info.path, self.root)

    def files_in(self, reldir: str) -> list[tuple[str, datetime | None]]:
        """(relative path, modification time) of the files directly under ``reldir`` (none
        if it is missing), hidden (temporary) ones left out."""
        selector = pafs.FileSelector(self.path(reldir), recursive=False, allow_not_found=True)
        infos = self._attempt(f"listing {reldir or '/'}", lambda fs: fs.get_file_info(selector))
        out = []
        for info in infos:
            if info.type != pafs.FileType.File or posixpath.basename(info.path).startswith("."):
                continue
            mtime = info.mtime
            if mtime is not None and mtime.tzinfo is None:
                mtime = mtime.replace(tzinfo=UTC)
            out.append((posixpath.relpath(info.path, self.root), mtime))
        return sorted(out)

    def parquet_rows(self, relpath: str) -> int:
        """How many rows a Parquet file holds (its footer only is read)."""
        full = self.path(relpath)

        def count(fs: pafs.FileSystem) -> int:
            with fs.open_input_file(full) as f:
                return int(pq.ParquetFile(f).metadata.num_rows)

        return self._attempt(f"reading {relpath}", count)

    def list_dir(self, reldir: str) -> list[tuple[str, bool]]:
        """The entries directly under ``reldir`` (none if it is missing): (name, is a
        directory). On an object store, a directory is a common prefix of keys."""
        selector = pafs.FileSelector(self.path(reldir), recursive=False, allow_not_found=True)
        infos = self._attempt(f"listing {reldir or '/'}", lambda fs: fs.get_file_info(selector))
        return sorted(
            (posixpath.basename(info.path), info.type == pafs.FileType.Directory)
            for info in infos
            if info.type in (pafs.FileType.File, pafs.FileType.Directory)
        )

    def delete_file(self, relpath: str) -> None:
        """Delete a file; one that is already gone is no error."""
        full = self.path(relpath)

        def delete(fs: pafs.FileSystem) -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(full)

        self._attempt(f"deleting {relpath}", delete)

    def delete_dir(self, reldir: str) -> None:
        """Delete a directory and everything under it (on an object store, every key under
        the prefix); one that is already gone is no error."""
        assert reldir.strip("/"), "never the output itself"
        full = self.path(reldir)

        def delete(fs: pafs.FileSystem) -> None:
            with contextlib.suppress(FileNotFoundError):
                fs.delete_dir(full)

        self._attempt(f"deleting {reldir}", delete)

    def prepare(self) -> int:
        """Make sure the output can be written, and delete the temporary files a killed run
        left behind; returns how many. Run before anything is read, so that an output that
        cannot be used stops the run with a StorageError instead of failing at its end.

        An object store never holds temporary files (files are uploaded whole to their
        final key, and an upload that never completed is not an object), so it is only
        reached (and its bucket made).
        """
        _ = self.fs  # an object store is reached here, and its bucket made
        if self.object_store:
            return 0
        if self.local:
            try:
                os.makedirs(self.root, exist_ok=True)
                # not named as a temporary file: another process of a cluster, removing
                # stale temporary files as it starts, must not take it
                probe = posixpath.join(self.root, f".write-probe.{uuid.uuid4().hex}")
                with open(probe, "wb"):
                    pass
                os.remove(probe)
            except OSError as err:
                raise StorageError(
                    f"output {self.root} cannot be written: {err.strerror or err}"
                ) from None
        return self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files a killed run left behind; returns how many."""
        fs = self.fs
        if self.object_store:
            return 0
        stale = [p for p in self.list_files("") if p.endswith(TMP_SUFFIX)]
        for relpath in stale:
            fs.delete_file(self.path(relpath))
        return len(stale)
