"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) on free loopback ports, for the PACS tests.

``Orthanc`` writes a generated configuration (HTTP and DICOM ports, storage in a temporary folder, the
DICOMweb plugin, remote access off, optionally HTTP basic authentication, Lua scripts), starts
``Orthanc CONFIG.json``, waits until ``/system`` answers and stops the process afterwards (``stop``/``start``
also let a test take the server down in the middle of a run). ``private_authority`` makes a CA and a server
certificate for 127.0.0.1 signed by it (openssl). Debian 12's Orthanc 1.10.1 cannot serve HTTPS itself: with
``"SslEnabled": true`` it crashes (SIGSEGV, a null function pointer in libcivetweb 1.15's worker thread) on
the first connection, so the TLS tests put a TLS-terminating forwarder (cut_proxy.CutProxy with a
certificate) in front of it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # dpkg -L orthanc-dicomweb
HOST = "127.0.0.1"


def available() -> bool:
    """Whether Orthanc and its DICOMweb plugin are installed here (install.sh installs them as root)."""
    return shutil.which("Orthanc") is not None and PLUGIN.exists()


def private_authority(folder: Path) -> tuple[Path, Path]:
    """(the CA's certificate, a PEM with the server's key and certificate for 127.0.0.1 that the CA signed),
    made with the openssl command in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, request, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                           "server.crt"))

    def openssl(*args) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", "/CN=SegUncertainty test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", f"/CN={HOST}")
    extensions = folder / "server.ext"
    extensions.write_text(f"subjectAltName=IP:{HOST}\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "2", "-extfile", extensions)
    pem = folder / "server.pem"
    pem.write_text(key.read_text() + cert.read_text())
    return ca, pem


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process; ``users`` ({name: password}) turns HTTP basic authentication on; ``modalities``
    ({calling AE title: (host, port)}) are the DICOM nodes it knows, which may query it (C-FIND): Orthanc
    answers C-FIND only from a known node, and takes C-STORE from any; ``settings`` are further configuration
    options (e.g. ``{"OverwriteInstances": true}``: a C-STORE of an instance it holds is stored again, and
    ``/changes`` records it); ``lua`` is a Lua script it runs (e.g. an ``IncomingHttpRequestFilter`` that
    refuses requests: Orthanc answers 403)."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, int]] | None = None, settings: dict | None = None,
                 lua: str | None = None):
        self.folder = folder
        self.users = users
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)
        if lua is not None:
            (folder / "filter.lua").write_text(lua)
        config = {
            "Name": "seguncertainty-test", "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
            "Plugins": [str(PLUGIN)], "RemoteAccessAllowed": False, "HttpTimeout": 30,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "AuthenticationEnabled": users is not None, "RegisteredUsers": users or {},
            "StableAge": 1, "ConcurrentJobs": 1,
            "DicomModalities": {name: [name, host, port] for name, (host, port) in (modalities or {}).items()},
            **({"LuaScripts": [str(folder / "filter.lua")]} if lua is not None else {}),
            **(settings or {}),
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def dimse(self) -> str:
        """Its DICOM address, ``AET@HOST:PORT``."""
        return f"{self.aet}@{HOST}:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items())) if self.users else None

    def start(self, timeout: float = 30.0) -> Orthanc:
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: "
                                   f"{(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.get("/system", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url}/system within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str, **kwargs) -> requests.Response:
        """A REST call (``/instances``, ``/series/ID``...) with the server's credentials."""
        return requests.get(f"{self.url}{path}", **{"auth": self.auth, "timeout": 30, **kwargs})

    def upload(self, files) -> list[str]:
        """POST each DICOM file to ``/instances``; the Orthanc instance ids."""
        ids = []
        for path in files:
            response = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), auth=self.auth, timeout=30)
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def instances(self) -> list[str]:
        return self.get("/instances").json()
