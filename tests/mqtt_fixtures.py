"""Real Mosquitto brokers, a fault-injecting TCP proxy and small paho clients for the MQTT tests.

Everything here runs real processes and sockets on 127.0.0.1. A test module uses the fixtures
with ``pytest_plugins = ("tests.mqtt_fixtures",)`` and the helpers by plain import.

Fixtures: ``mosquitto_path``, ``tls_files`` (session); ``broker_factory``, ``broker``,
``auth_broker``, ``tls_broker``, ``mtls_broker``, ``proxy_factory``, ``proxy`` (function).

PYTEST_DONT_REWRITE: test modules import this before pytest registers it as a plugin, which
would otherwise warn that it cannot rewrite it; its asserts are internal checks only.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.waiting import wait_until as wait_until  # re-exported: tests import it from here

HOST = "127.0.0.1"
PREFIX = "edge"
DEVICE = "cam-17"
DEVICE_PASSWORD = "cam-17-secret"
OPERATOR = "operator"
OPERATOR_PASSWORD = "operator-secret"

# Every config file a Broker wrote in this process, so a test can prove none is left running.
STARTED_CONFIGS: list[Path] = []

T = TypeVar("T")


class Endpoint(Protocol):
    """Anything clients can connect to: a Broker or a TcpProxy."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Address:
    """A plain host and port, for targets that are neither a Broker nor a TcpProxy."""

    host: str
    port: int


def free_port(host: str = HOST) -> int:
    """A port that was free a moment ago (the kernel picks it; a race is unlikely, not excluded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> Path | None:
    # /usr/sbin is not on every user's PATH, and Debian installs the broker there.
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def mosquitto_processes(config: Path) -> list[int]:
    """Pids of processes whose command line names this config file (``pgrep -f``)."""
    pgrep = shutil.which("pgrep")
    if pgrep:
        out = subprocess.run(
            [pgrep, "-f", "--", str(config)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(config).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids


# --- credentials -------------------------------------------------------------------------------


def mosquitto_password_line(username: str, password: str, iterations: int = 101) -> str:
    """One password-file line in the format ``mosquitto_passwd`` writes (``$7$``: PBKDF2-SHA512,
    12-byte salt, base64), which Mosquitto 2.0 accepts."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt64 = base64.b64encode(salt).decode()
    hash64 = base64.b64encode(digest).decode()
    return f"{username}:$7${iterations}${salt64}${hash64}\n"


def make_password_file(
    path: Path,
    users: Mapping[str, str],
    method: Literal["auto", "mosquitto_passwd", "python"] = "auto",
) -> Path:
    """A hashed password file; ``mosquitto_passwd -b`` where it exists, else hashed in Python."""
    tool = shutil.which("mosquitto_passwd")
    if method == "mosquitto_passwd" and tool is None:
        raise FileNotFoundError("mosquitto_passwd is not installed")
    if method == "python" or tool is None:
        path.write_text("".join(mosquitto_password_line(u, p) for u, p in users.items()))
        return path
    path.unlink(missing_ok=True)
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            [tool, "-b", *create, str(path), user, password], check=True, capture_output=True
        )
    return path


def device_acl(
    devices: Sequence[str] = (DEVICE,),
    operators: Sequence[str] = (OPERATOR,),
    prefix: str = PREFIX,
    groups: Sequence[str] = ("g1",),
) -> str:
    """ACL text (as docs/mqtt.md gives it): each device reads and writes only its own subtree
    and reads its groups' and the broadcast commands; operators may do anything."""
    blocks = []
    for device in devices:
        group_lines = "".join(f"topic read {prefix}/group/{g}/cmd/#\n" for g in groups)
        blocks.append(
            f"user {device}\n"
            f"topic readwrite {prefix}/{device}/#\n"
            f"{group_lines}"
            f"topic read {prefix}/all/cmd/#\n"
        )
    blocks.extend(f"user {operator}\ntopic readwrite #\n" for operator in operators)
    return "\n".join(blocks)


def find_dynamic_security() -> Path | None:
    """Mosquitto's dynamic security plugin, where the distribution ships it."""
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    found += sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    return found[0] if found else None


def dynamic_security(
    directory: Path, clients: Mapping[str, tuple[str, Sequence[tuple[str, str]]]]
) -> list[str]:
    """Broker config lines loading Mosquitto's dynamic security plugin with `clients`: user
    -> (password, [(acltype, topic), ...]) allowed, everything else denied. Unlike an
    acl_file, whose read rules Mosquitto 2.0 applies at delivery and grants every
    SUBSCRIBE, its subscribePattern rules refuse the subscription in the SUBACK (0x87 on
    MQTT 5, 0x80 on 3.1.1)."""
    plugin = find_dynamic_security()
    if plugin is None:
        raise FileNotFoundError("mosquitto_dynamic_security.so is not installed")
    entries, roles = [], []
    for user, (password, acls) in clients.items():
        salt = secrets.token_bytes(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
        entries.append(
            {
                "username": user,
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": 101,
                "roles": [{"rolename": f"role-{user}"}],
            }
        )
        roles.append(
            {
                "rolename": f"role-{user}",
                "acls": [{"acltype": kind, "topic": topic, "allow": True} for kind, topic in acls],
            }
        )
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": entries,
        "groups": [],
        "roles": roles,
    }
    path = directory / "dynamic-security.json"
    path.write_text(json.dumps(config))
    return [f"plugin {plugin}", f"plugin_opt_config_file {path}"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a test PKI: a CA, a server certificate for 127.0.0.1/localhost, and a
    client certificate whose CN is ``client_cn``."""

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_cn: str


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None = None,
    san: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = dt.datetime.now(dt.timezone.utc)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        # A day of slack either way: a skewed clock must not make the tests fail.
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: Path, client_cn: str = DEVICE) -> TlsFiles:
    """Generate the CA, server and client certificates (EC P-256) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("edge-agent test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        "localhost",
        server_key,
        ca.subject,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        client_cn, client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    files = TlsFiles(
        directory=directory,
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_cn=client_cn,
    )
    files.ca_cert.write_bytes(ca.public_bytes(pem))
    files.server_cert.write_bytes(server.public_bytes(pem))
    files.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(files.server_key, server_key)
    _write_key(files.client_key, client_key)
    return files


class _PortTaken(RuntimeError):
    pass


# --- broker ------------------------------------------------------------------------------------


class Broker:
    """One ``mosquitto -c FILE`` process with a listener on 127.0.0.1.

    The config, password and ACL files are written at construction; ``start()`` picks a free port
    the first time and keeps it across ``stop()``/``start()``/``restart()``. Mosquitto's log
    (``log_type all``) goes to ``log_path``, appended across restarts.
    """

    def __init__(
        self,
        directory: Path,
        *,
        allow_anonymous: bool | None = None,
        users: Mapping[str, str] | None = None,
        acl: str | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        max_packet_size: int | None = None,
        extra_config: Sequence[str] = (),
        port: int | None = None,
        binary: Path | None = None,
        listener_config: Sequence[str] = (),
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto is not installed (scripts/setup.sh installs it)")
        self.binary = found
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or 0
        self.users = dict(users or {})
        self.tls = tls
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.password_path: Path | None = None
        self.acl_path: Path | None = None
        self._global: list[str] = []
        self._listener_options: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

        if os.geteuid() == 0:
            # As root, Mosquitto 2.0 drops to user "mosquitto", which cannot read our 0700 tmp dirs.
            self._global.append("user root")
        anonymous = allow_anonymous if allow_anonymous is not None else not self.users
        self._global += [
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "persistence false",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
        ]
        if self.users:
            self.password_path = make_password_file(directory / "passwd", self.users)
            self._global.append(f"password_file {self.password_path}")
        if acl is not None:
            self.acl_path = directory / "acl"
            self.acl_path.write_text(acl)
            self._global.append(f"acl_file {self.acl_path}")
        if max_packet_size is not None:
            self._global.append(f"max_packet_size {max_packet_size}")
        self._global += list(extra_config)
        if tls is not None:
            self._listener_options += [
                f"cafile {tls.ca_cert}",
                f"certfile {tls.server_cert}",
                f"keyfile {tls.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        # Options of the listener itself (max_qos, retain_available): after its line, or
        # Mosquitto opens a default listener on 1883 for them.
        self._listener_options += list(listener_config)
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            "# Written by tests/mqtt_fixtures.py for one test broker.",
            *self._global,
            f"listener {self.port} {self.host}",
            *self._listener_options,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """Wait until ``text`` appears in the log; returns the log."""
        wait_until(lambda: text in self.log_text(), timeout, f"{text!r} in {self.log_path}")
        return self.log_text()

    def start(self, timeout: float = 10.0) -> Broker:
        if self.running:
            return self
        if self.port:
            # Fixed, or chosen by an earlier start: a restart must come back on the same port.
            self._spawn(timeout)
            return self
        for attempt in range(3):
            # A free port can be taken before Mosquitto binds it: then pick another.
            self.port = free_port(self.host)
            self._write_config()
            try:
                self._spawn(timeout)
                return self
            except _PortTaken:
                if attempt == 2:
                    raise
        return self

    def _spawn(self, timeout: float) -> None:
        STARTED_CONFIGS.append(self.config_path)
        log_start = len(self.log_text())
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._close_log()
                log = self.log_text()[log_start:]
                error = _PortTaken if "Address already in use" in log else RuntimeError
                raise error(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    + log[-2000:]
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            if self._proc.poll() is None:
                return
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate, then kill if it has not exited within ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def restart(self, timeout: float = 10.0) -> Broker:
        """Stop and start again on the same port (sessions are lost: persistence is off)."""
        self.stop()
        return self.start(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker({self.host}:{self.port}, {self.config_path})"


# --- TCP proxy ---------------------------------------------------------------------------------


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        # Per socket: bytes waiting to be written to it, whether it sent EOF, whether we shut it.
        self.pending: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.read_eof: dict[socket.socket, bool] = {client: False, upstream: False}
        self.write_shut: dict[socket.socket, bool] = {client: False, upstream: False}

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    @property
    def finished(self) -> bool:
        return all(self.read_eof.values()) and not any(self.pending.values())


class TcpProxy:
    """A TCP forwarder on a free 127.0.0.1 port to ``target`` (host and port read on each new
    connection, so a restarted broker is found again), run by one selector thread.

    Faults: ``cut()`` closes every current connection and keeps accepting; ``blackhole()`` keeps
    connections open but forwards nothing either way (the half-open case; data stays in the kernel
    buffers, and new connections are accepted but not forwarded); ``restore()`` forwards again;
    ``refuse()`` closes the listening socket (connection refused) and ``accept()`` listens again on
    the same port. A new connection whose target refuses is closed at once.
    """

    _WAKE = "wake"
    _LISTEN = "listen"

    def __init__(
        self,
        target: Endpoint,
        *,
        host: str = HOST,
        port: int = 0,
        buffer_limit: int = 256 * 1024,
        connect_timeout: float = 2.0,
    ) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.buffer_limit = buffer_limit
        self.connect_timeout = connect_timeout
        self.accepted = 0  # connections accepted so far
        self._forwarding = True
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._interest: dict[socket.socket, int] = {}
        self._commands: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._cleaned = False
        self._thread: threading.Thread | None = None

    # Public API; each call runs in the proxy thread and returns once it took effect.

    def start(self) -> TcpProxy:
        if self._thread is not None:
            return self
        self._listen()
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._WAKE)
        self._thread = threading.Thread(target=self._run, name=f"TcpProxy:{self.port}", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        """Close all current connections at once; new ones are still accepted."""
        self._call(self._close_all)

    def blackhole(self) -> None:
        """Stop forwarding in both directions, silently; connections stay open."""
        self._call(lambda: self._set_forwarding(False))

    def restore(self) -> None:
        """Forward again, on the connections that are still open and on new ones."""
        self._call(lambda: self._set_forwarding(True))

    def refuse(self) -> None:
        """Stop listening: new connections are refused. Open ones are kept."""
        self._call(self._unlisten)

    def accept(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._call(lambda: len(self._links))

    @property
    def listening(self) -> bool:
        return self._call(lambda: self._listener is not None)

    def stop(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._cleanup()
            return
        self._stopping = True
        self._wake()
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("TcpProxy thread did not stop")

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TcpProxy({self.host}:{self.port} -> {self.target.host}:{self.target.port})"

    # Thread plumbing.

    def _call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("TcpProxy is not running")
        if threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        result: list[T] = []
        error: list[BaseException] = []

        def command() -> None:
            try:
                result.append(fn())
            except BaseException as exc:
                error.append(exc)
            finally:
                done.set()

        with self._lock:
            self._commands.append(command)
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("TcpProxy did not answer")
        if error:
            raise error[0]
        return result[0]

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self._selector.select(timeout=0.5):
                    if key.data == self._WAKE:
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                    elif key.data == self._LISTEN:
                        self._on_accept()
                    else:
                        assert isinstance(key.data, _Link)
                        assert isinstance(key.fileobj, socket.socket)
                        self._on_ready(key.data, key.fileobj, mask)
                with self._lock:
                    commands, self._commands = self._commands, []
                for command in commands:
                    command()
                self._update_interest()
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._close_all()
        self._unlisten()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._wake_r)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        # Commands queued after the loop ended are answered rather than left to time out.
        with self._lock:
            commands, self._commands = self._commands, []
        for command in commands:
            command()

    def _listen(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(64)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, self._LISTEN)

    def _unlisten(self) -> None:
        if self._listener is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._listener.close()
        self._listener = None

    def _set_forwarding(self, on: bool) -> None:
        self._forwarding = on

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except OSError:  # nothing pending, or the client gave up before we accepted
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection(
                (self.target.host, self.target.port), timeout=self.connect_timeout
            )
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._links.append(_Link(client, upstream))

    def _on_ready(self, link: _Link, sock: socket.socket, mask: int) -> None:
        if link not in self._links:
            return
        peer = link.peer(sock)
        try:
            if mask & selectors.EVENT_READ:
                data = sock.recv(65536)
                if data:
                    link.pending[peer] += data
                else:
                    link.read_eof[sock] = True
            if mask & selectors.EVENT_WRITE and link.pending[sock]:
                sent = sock.send(link.pending[sock])
                del link.pending[sock][:sent]
            for side in (link.client, link.upstream):
                # Pass an EOF on once everything before it has been written.
                eof = link.read_eof[link.peer(side)]
                if eof and not link.pending[side] and not link.write_shut[side]:
                    link.write_shut[side] = True
                    side.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:
            self._close_link(link)
            return
        if link.finished:
            self._close_link(link)

    def _update_interest(self) -> None:
        for link in self._links:
            for sock in (link.client, link.upstream):
                events = 0
                if self._forwarding:
                    peer = link.peer(sock)
                    if not link.read_eof[sock] and len(link.pending[peer]) < self.buffer_limit:
                        events |= selectors.EVENT_READ
                    if link.pending[sock]:
                        events |= selectors.EVENT_WRITE
                self._set_interest(sock, events, link)

    def _set_interest(self, sock: socket.socket, events: int, link: _Link) -> None:
        current = self._interest.get(sock, 0)
        if events == current:
            return
        if current and not events:
            self._selector.unregister(sock)
            del self._interest[sock]
        elif not current:
            self._selector.register(sock, events, link)
            self._interest[sock] = events
        else:
            self._selector.modify(sock, events, link)
            self._interest[sock] = events

    def _close_link(self, link: _Link) -> None:
        for sock in (link.client, link.upstream):
            if self._interest.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            sock.close()
        with contextlib.suppress(ValueError):
            self._links.remove(link)

    def _close_all(self) -> None:
        for link in list(self._links):
            self._close_link(link)


# --- MQTT clients ------------------------------------------------------------------------------


class ConnectRefused(Exception):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(self, reason: ReasonCode) -> None:
        super().__init__(f"connection refused: {reason} ({reason.value:#04x})")
        self.reason = reason


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None = field(default=None, compare=False)


def publish_properties(user: Mapping[str, str] | None = None, **values: Any) -> Properties:
    """MQTT 5 PUBLISH properties: user properties plus any named ones (``ResponseTopic=...``)."""
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for name, value in values.items():
        setattr(props, name, value)
    if user:
        props.UserProperty = list(user.items())
    return props


def property_value(props: Properties | None, name: str) -> Any:
    """A property by its paho name (``MaximumPacketSize``, ``UserProperty``), or None."""
    return getattr(props, name, None)


class Probe:
    """A paho-mqtt 2.2 client (callback API 2, MQTT 5 by default) on its own network thread that
    records what happens to it: every CONNACK, disconnect, failed reconnect, PUBACK and SUBACK.

    ``tls`` turns TLS on: the CA is trusted unless ``trust_ca`` is false (then only the system's
    CAs are), and the client certificate is presented when ``client_cert`` is true.

    paho 2.2 calls on_disconnect twice for one keepalive timeout, so ``disconnects`` can hold more
    entries than there were lost connections: count reconnects with ``connected_count`` or SUBACKs.
    """

    def __init__(
        self,
        target: Endpoint,
        *,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        trust_ca: bool = True,
        client_cert: bool = False,
        keepalive: int = 60,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        reconnect_delay: tuple[int, int] = (1, 2),
        clean_session: bool | None = None,
    ) -> None:
        self.target = target
        self.keepalive = keepalive
        # clean_session (MQTT 3.1.1 only): False keeps the session, and what is published
        # for it while it is away, across its reconnects (a durable subscriber).
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls.ca_cert) if trust_ca else None,
                certfile=str(tls.client_cert) if client_cert else None,
                keyfile=str(tls.client_key) if client_cert else None,
            )
        self.client.reconnect_delay_set(*reconnect_delay)
        self._cond = threading.Condition()
        self.connacks: list[ReasonCode] = []
        self.connack_properties: list[Properties | None] = []
        self.disconnects: list[ReasonCode] = []
        self.connect_failures = 0
        self._pubacks: dict[int, ReasonCode] = {}
        self.subacks: list[list[ReasonCode]] = []
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self._started = False

    # paho callbacks (network thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.connacks.append(reason)
            self.connack_properties.append(properties)
            self._cond.notify_all()

    def _on_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        with self._cond:
            self.connect_failures += 1
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.disconnects.append(reason)
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # May run before publish() has returned the mid: keyed by mid, read afterwards.
        with self._cond:
            self._pubacks[mid] = reason
            self._cond.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self.subacks.append(list(reasons))
            self._cond.notify_all()

    # waiting

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(condition, timeout):
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {what}; connacks={self.connacks} "
                    f"disconnects={self.disconnects} connect_failures={self.connect_failures}"
                )

    @property
    def connected_count(self) -> int:
        """Successful CONNACKs so far."""
        with self._cond:
            return sum(1 for rc in self.connacks if not rc.is_failure)

    @property
    def is_connected(self) -> bool:
        return self.client.is_connected()

    def connect(self, timeout: float = 10.0) -> ReasonCode:
        """Connect (blocking, so TLS and socket errors raise here), start the network thread and
        wait for the CONNACK. A refusal stops the client and raises ConnectRefused."""
        if self._started:
            # A second paho connect() would silently replace the live connection.
            raise RuntimeError("Probe.connect() called twice")
        self.client.connect(self.target.host, self.target.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._started = True
        self._wait(lambda: bool(self.connacks or self.disconnects), timeout, "CONNACK")
        with self._cond:
            connack = self.connacks[0] if self.connacks else None
            lost = self.disconnects[0] if self.disconnects else None
        if connack is None:
            self.close()
            raise ConnectionError(f"connection closed before CONNACK: {lost}")
        if connack.is_failure:
            self.close()
            raise ConnectRefused(connack)
        return connack

    def connect_async(self) -> None:
        """Start connecting in the background; a broker that is down is retried."""
        if self._started:
            raise RuntimeError("Probe already connecting")
        self.client.connect_async(self.target.host, self.target.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._started = True

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait for the ``count``-th successful CONNACK (2 = the first reconnect)."""
        self._wait(
            lambda: sum(1 for rc in self.connacks if not rc.is_failure) >= count,
            timeout,
            f"{count} successful CONNACK(s)",
        )

    def wait_disconnected(self, count: int = 1, timeout: float = 10.0) -> ReasonCode:
        """Wait for the ``count``-th disconnect and return its reason code."""
        self._wait(lambda: len(self.disconnects) >= count, timeout, f"disconnect #{count}")
        with self._cond:
            return self.disconnects[count - 1]

    def wait_connect_failures(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``count`` reconnect attempts failed at the socket level (e.g. refused)."""
        self._wait(lambda: self.connect_failures >= count, timeout, f"{count} connect failures")

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float = 10.0,
    ) -> ReasonCode:
        """Publish and wait until paho reports it done (the PUBACK for QoS 1); returns the
        PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        self._wait(lambda: info.mid in self._pubacks, timeout, f"PUBACK for mid {info.mid}")
        with self._cond:
            return self._pubacks.pop(info.mid)

    def subscribe(
        self, topics: str | Sequence[str], qos: int = 1, timeout: float = 10.0
    ) -> list[ReasonCode]:
        """Subscribe and return the SUBACK's reason codes (granted QoS or a failure)."""
        names = [topics] if isinstance(topics, str) else list(topics)
        with self._cond:
            before = len(self.subacks)
        self.client.subscribe([(name, qos) for name in names])
        self._wait(lambda: len(self.subacks) > before, timeout, "SUBACK")
        with self._cond:
            return self.subacks[before]

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread; safe to call twice."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber(Probe):
    """A Probe that subscribes to ``topics`` with QoS 1 on every (re)connect and keeps what it
    receives. ``start()`` returns once the first SUBACK is in."""

    def __init__(
        self,
        target: Endpoint,
        topics: str | Sequence[str] = "#",
        *,
        qos: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(target, **options)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.qos = qos
        self._messages: list[Received] = []
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            # Sessions do not outlive a reconnect here (clean start, no persistence).
            client.subscribe([(topic, self.qos) for topic in self.topics])
        super()._on_connect(client, userdata, flags, reason, properties)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received = Received(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            properties=getattr(msg, "properties", None),
        )
        with self._cond:
            self._messages.append(received)
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        """Connect and wait for the first SUBACK; a no-op when already started."""
        if self._started:
            return self
        self.connect(timeout)
        self.wait_subscribed(1, timeout)
        return self

    def wait_subscribed(self, count: int = 1, timeout: float = 10.0) -> list[ReasonCode]:
        """Wait for the ``count``-th SUBACK (one per successful connect) and return its codes."""
        self._wait(lambda: len(self.subacks) >= count, timeout, f"SUBACK #{count}")
        with self._cond:
            return self.subacks[count - 1]

    @property
    def granted(self) -> list[ReasonCode]:
        """Reason codes of the latest SUBACK."""
        with self._cond:
            return list(self.subacks[-1]) if self.subacks else []

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    def wait_for(
        self,
        what: int | Callable[[Received], bool] = 1,
        timeout: float = 10.0,
        *,
        count: int = 1,
    ) -> list[Received]:
        """Wait until ``what`` messages arrived (an int), or ``count`` messages matching ``what``
        (a predicate); returns those messages."""
        predicate: Callable[[Received], bool]
        if isinstance(what, int):
            predicate, count = (lambda _m: True), what
        else:
            predicate = what

        def matching() -> list[Received]:
            return [m for m in self._messages if predicate(m)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(
                    f"timed out after {timeout} s waiting for {count} message(s); "
                    f"got {[(m.topic, m.payload[:40]) for m in self._messages]}, "
                    f"subacks={self.subacks}, disconnects={self.disconnects}"
                )
            return matching()

    def __enter__(self) -> Subscriber:
        return self.start()


# --- fixtures ----------------------------------------------------------------------------------

BrokerFactory = Callable[..., Broker]
ProxyFactory = Callable[..., TcpProxy]


@pytest.fixture(scope="session")
def mosquitto_path() -> Path:
    path = find_mosquitto()
    if path is None:
        message = "mosquitto is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker_factory(
    mosquitto_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerFactory]:
    """``broker_factory(**Broker options)`` starts a broker that is stopped after the test."""
    brokers: list[Broker] = []

    def make(**options: Any) -> Broker:
        directory = tmp_path_factory.mktemp("mosquitto")
        broker = Broker(directory, binary=mosquitto_path, **options)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """Anonymous access, no TLS."""
    return broker_factory()


@pytest.fixture
def auth_broker(broker_factory: BrokerFactory) -> Broker:
    """Password file with DEVICE and OPERATOR, and the ``device_acl()`` ACL; no anonymous."""
    return broker_factory(
        users={DEVICE: DEVICE_PASSWORD, OPERATOR: OPERATOR_PASSWORD}, acl=device_acl()
    )


@pytest.fixture
def tls_broker(broker_factory: BrokerFactory, tls_files: TlsFiles) -> Broker:
    """TLS with the test CA; client certificates optional."""
    return broker_factory(tls=tls_files)


@pytest.fixture
def mtls_broker(broker_factory: BrokerFactory, tls_files: TlsFiles) -> Broker:
    """TLS that requires a client certificate signed by the test CA."""
    return broker_factory(tls=tls_files, require_certificate=True)


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """``proxy_factory(target, **TcpProxy options)`` starts a proxy stopped after the test."""
    proxies: list[TcpProxy] = []

    def make(target: Endpoint, **options: Any) -> TcpProxy:
        proxy = TcpProxy(target, **options)
        proxies.append(proxy)
        return proxy.start()

    yield make
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, broker: Broker) -> TcpProxy:
    """A TcpProxy in front of ``broker``."""
    return proxy_factory(broker)
