"""Security of a real `turnout serve` (contract §5): the admin API and HTTP side off loopback need a
bearer token, every admin call and page checks it, and the data port speaks TLS and mTLS."""

from __future__ import annotations

import datetime
import ipaddress
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from turnout import AsyncClient, RetryPolicy, SyncClient, TurnoutError, Unavailable
from turnout.admin.v1 import admin_pb2, admin_pb2_grpc
from turnout.client import TlsSettings

from tests.support.proxy_process import ProxyProcess, admin_address, http_address, run_cli, run_turnout, write_config

TOKEN = "s3cret-token-for-tests"
MEMORY = {"type": "memory"}
#: One attempt: a refused connection must fail at once, not be retried until the deadline.
_ONCE = RetryPolicy(attempts=1)


@dataclass(frozen=True, slots=True)
class Certificates:
    """A test CA and the PEM files it signed: one server certificate for 127.0.0.1/localhost, one client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _signed(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
            issuer_key: ec.EllipticCurvePrivateKey, extensions: list[tuple[x509.ExtensionType, bool]]
            ) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, as PEM files."""
    folder = tmp_path_factory.mktemp("certs")
    ca_key = _key()
    ca_name = _name("turnout test CA")
    ca = _signed(ca_name, ca_key, ca_name, ca_key, [(x509.BasicConstraints(ca=True, path_length=None), True)])
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key = _key()
    server = _signed(_name("localhost"), server_key, ca_name, ca_key, [
        (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ])
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    client_key = _key()
    client = _signed(_name("checkout"), client_key, ca_name, ca_key, [
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ])
    (folder / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    return Certificates(ca=folder / "ca.pem", server_cert=folder / "server.pem",
                        server_key=_write_key(server_key, folder / "server.key"),
                        client_cert=folder / "client.pem", client_key=_write_key(client_key, folder / "client.key"))


def _token_config(folder: Path) -> Path:
    (folder / "admin.token").write_text(TOKEN + "\n")
    return write_config(folder, MEMORY, MEMORY, admin={"listen": "127.0.0.1:0", "http": "127.0.0.1:0",
                                                      "token_file": "admin.token"})


@pytest.fixture
def token_proxy(tmp_path: Path) -> Iterator[ProxyProcess]:
    """`turnout serve` whose admin API and HTTP side require the bearer token in admin.token_file."""
    with ProxyProcess(_token_config(tmp_path)) as proxy:
        yield proxy


def _status(address: str, metadata: tuple[tuple[str, str], ...] = ()) -> admin_pb2.StatusResponse:
    with grpc.insecure_channel(address) as channel:
        reply: admin_pb2.StatusResponse = admin_pb2_grpc.AdminStub(channel).Status(
            admin_pb2.StatusRequest(), timeout=5, metadata=metadata)
    return reply


def _page_status(address: str, path: str, token: str | None) -> int:
    request = urllib.request.Request(f"http://{address}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as refused:
        code, challenge = int(refused.code), refused.headers.get("WWW-Authenticate", "")
    assert code != 401 or challenge.startswith("Bearer"), "a 401 must say which scheme it asks for"
    return code


@pytest.mark.parametrize("setting", ["listen", "http"])
def test_non_loopback_admin_without_token_file_refuses_to_start(tmp_path: Path, setting: str) -> None:
    """An admin address off loopback without admin.token_file stops `turnout serve` with exit 2, naming it."""
    admin = {"listen": "127.0.0.1:0", "http": "127.0.0.1:0", setting: "0.0.0.0:0"}
    config = write_config(tmp_path, MEMORY, MEMORY, admin=admin)
    done = run_cli(config, "serve", timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"admin.{setting}: 0.0.0.0:0 is not a loopback address: set admin.token_file" in done.stderr


def test_non_loopback_admin_with_token_file_serves(tmp_path: Path) -> None:
    """With admin.token_file, the HTTP side may listen on every address, and asks for the token there."""
    (tmp_path / "admin.token").write_text(TOKEN)
    config = write_config(tmp_path, MEMORY, MEMORY, admin={"listen": "127.0.0.1:0", "http": "0.0.0.0:0",
                                                           "token_file": "admin.token"})
    with ProxyProcess(config):
        port = http_address(tmp_path / "state").rpartition(":")[2]
        assert _page_status(f"127.0.0.1:{port}", "/healthz", None) == 401
        assert _page_status(f"127.0.0.1:{port}", "/healthz", TOKEN) == 200


@pytest.mark.parametrize("content", ["", "  \n", "two words\n"])
def test_unusable_token_file_refuses_to_start(tmp_path: Path, content: str) -> None:
    """An empty token file, or one that is no single header-safe word, stops `turnout serve` with exit 2."""
    (tmp_path / "admin.token").write_text(content)
    config = write_config(tmp_path, MEMORY, MEMORY, admin={"listen": "127.0.0.1:0", "token_file": "admin.token"})
    done = run_cli(config, "serve", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "admin.token_file:" in done.stderr


def test_missing_token_file_refuses_to_start(tmp_path: Path) -> None:
    """A token file that cannot be read stops `turnout serve` with exit 2, naming admin.token_file."""
    config = write_config(tmp_path, MEMORY, MEMORY, admin={"listen": "127.0.0.1:0", "token_file": "nowhere"})
    done = run_cli(config, "serve", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "admin.token_file:" in done.stderr
    assert "cannot read" in done.stderr


def test_admin_call_without_or_with_wrong_token_is_unauthenticated(token_proxy: ProxyProcess, tmp_path: Path) -> None:
    """With a token_file, an admin call without the token or with another is UNAUTHENTICATED; the right one works."""
    address = admin_address(tmp_path / "state")
    for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
        with pytest.raises(grpc.RpcError) as refused:
            _status(address, metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _status(address, (("authorization", f"Bearer {TOKEN}"),)).version


def test_streamed_and_unknown_admin_calls_without_token_are_unauthenticated(token_proxy: ProxyProcess,
                                                                           tmp_path: Path) -> None:
    """A streamed admin job (Migrate) and a method the API does not have are refused alike without the token."""
    with grpc.insecure_channel(admin_address(tmp_path / "state")) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            list(admin_pb2_grpc.AdminStub(channel).Migrate(admin_pb2.MigrateRequest(), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        unknown: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/turnout.admin.v1.Admin/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as refused:
            unknown(b"", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_refused_admin_call_changes_nothing(token_proxy: ProxyProcess, tmp_path: Path) -> None:
    """A SetOverride without the token is refused before it runs: no override is in force afterwards."""
    with grpc.insecure_channel(admin_address(tmp_path / "state")) as channel, pytest.raises(grpc.RpcError) as refused:
        admin_pb2_grpc.AdminStub(channel).SetOverride(admin_pb2.SetOverrideRequest(route="new"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert run_turnout(tmp_path / "turnout.yaml", "status")["override"]["active"] is False


def test_commands_send_the_configs_token(token_proxy: ProxyProcess, tmp_path: Path) -> None:
    """`turnout status`, `rollback`, `resume`, `route` and the streamed `migrate` reach a token-guarded admin
    API with the config's token."""
    config = tmp_path / "turnout.yaml"
    assert run_turnout(config, "migrate")["mode"] == "live"
    assert run_turnout(config, "status")["override"]["active"] is False
    run_turnout(config, "rollback", "--reason", "drill")
    assert run_turnout(config, "status")["override"]["route"] == "old"
    run_turnout(config, "resume")
    assert run_turnout(config, "route", "user:1")["source"] == "the running proxy"


def test_commands_with_a_wrong_token_say_they_were_refused(token_proxy: ProxyProcess, tmp_path: Path) -> None:
    """A config whose token file holds another token makes `status`, `route` and `migrate` exit 2, saying refused."""
    (tmp_path / "admin.token").write_text("not-the-token")
    for command in (["status"], ["route", "user:1"], ["migrate"]):
        done = run_cli(tmp_path / "turnout.yaml", *command)
        assert done.returncode == 2, command
        assert "refused the call: wrong bearer token" in done.stderr, command


def test_http_pages_need_the_token(token_proxy: ProxyProcess, tmp_path: Path) -> None:
    """With a token_file, every page of the HTTP side answers 401 without the token and 200 with it."""
    address = http_address(tmp_path / "state")
    for path in ["/metrics", "/healthz", "/status.json", "/discrepancies.json", "/"]:
        assert _page_status(address, path, None) == 401, path
        assert _page_status(address, path, "wrong") == 401, path
        assert _page_status(address, path, TOKEN) == 200, path


def test_workers_relay_with_the_token(tmp_path: Path) -> None:
    """Under --workers 2 with a token, worker 0 reaches worker 1 for status and for /metrics."""
    config = write_config(tmp_path, {"type": "sqlite", "path": "old.sqlite"}, {"type": "sqlite", "path": "new.sqlite"},
                          admin={"listen": "127.0.0.1:0", "http": "127.0.0.1:0", "token_file": "admin.token"})
    (tmp_path / "admin.token").write_text(TOKEN)
    with ProxyProcess(config, args=["--workers", "2"]):
        status = run_turnout(config, "status")
        assert [worker["reachable"] for worker in status["workers"]] == [True, True]
        request = urllib.request.Request(f"http://{http_address(tmp_path / 'state')}/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert 'turnout_worker_up{worker="1"} 1.0' in reply.read().decode()


def _tls_config(folder: Path, certificates: Certificates, mutual: bool) -> Path:
    tls = {"cert_file": str(certificates.server_cert), "key_file": str(certificates.server_key)}
    if mutual:
        tls["client_ca_file"] = str(certificates.ca)
    return write_config(folder, MEMORY, MEMORY, tls=tls)


def test_tls_data_port_refuses_plaintext_and_serves_tls(tmp_path: Path, certificates: Certificates) -> None:
    """With tls:, a plaintext client cannot call the data port; a client trusting the CA can."""
    with ProxyProcess(_tls_config(tmp_path, certificates, mutual=False)) as proxy:
        with SyncClient(proxy.target, timeout=2, retry=_ONCE) as plain, pytest.raises(Unavailable):
            plain.set("k", 1)
        with SyncClient(proxy.target, tls=TlsSettings(ca_file=certificates.ca)) as client:
            client.set("k", {"over": "tls"})
            assert client.get("k") == {"over": "tls"}


async def test_async_client_over_tls(tmp_path: Path, certificates: Certificates) -> None:
    """The async client takes the same TLS settings as the sync one."""
    with ProxyProcess(_tls_config(tmp_path, certificates, mutual=False)) as proxy:
        async with AsyncClient(proxy.target, tls=TlsSettings(ca_file=certificates.ca)) as client:
            await client.set("k", [1, 2])
            assert await client.get("k") == [1, 2]


def test_mtls_needs_a_client_certificate(tmp_path: Path, certificates: Certificates) -> None:
    """With tls.client_ca_file, a client without a certificate is refused and one with a signed one is served."""
    with ProxyProcess(_tls_config(tmp_path, certificates, mutual=True)) as proxy:
        with SyncClient(proxy.target, timeout=2, retry=_ONCE,
                        tls=TlsSettings(ca_file=certificates.ca)) as anonymous, pytest.raises(TurnoutError):
            anonymous.set("k", 1)
        tls = TlsSettings(ca_file=certificates.ca, cert_file=certificates.client_cert, key_file=certificates.client_key)
        with SyncClient(proxy.target, tls=tls) as client:
            client.set("k", "mutual")
            assert client.get("k") == "mutual"


def test_kv_command_over_mtls(tmp_path: Path, certificates: Certificates) -> None:
    """`turnout kv set/get` reach an mTLS data port with --ca-file, --cert-file and --key-file."""
    with ProxyProcess(_tls_config(tmp_path, certificates, mutual=True)):
        config = tmp_path / "turnout.yaml"
        options = ["--ca-file", str(certificates.ca), "--cert-file", str(certificates.client_cert),
                   "--key-file", str(certificates.client_key)]
        assert run_turnout(config, "kv", "set", "k", '{"a": 1}', *options)["stored"] is True
        assert run_turnout(config, "kv", "get", "k", *options)["value"] == {"a": 1}
        done = run_cli(config, "kv", "get", "k", "--ca-file", str(tmp_path / "missing.pem"))
        assert done.returncode == 2
        assert "TlsSettings.ca_file: cannot read" in done.stderr


def test_tls_under_workers(tmp_path: Path, certificates: Certificates) -> None:
    """Under --workers 2, every worker serves the data port over TLS."""
    tls = {"cert_file": str(certificates.server_cert), "key_file": str(certificates.server_key)}
    config = write_config(tmp_path, {"type": "sqlite", "path": "old.sqlite"}, {"type": "sqlite", "path": "new.sqlite"},
                          tls=tls)
    with ProxyProcess(config, args=["--workers", "2"]) as proxy:
        for attempt in range(8):  # new connections spread over the workers (SO_REUSEPORT)
            with SyncClient(proxy.target, tls=TlsSettings(ca_file=certificates.ca)) as client:
                client.set(f"k{attempt}", attempt)
                assert client.get(f"k{attempt}") == attempt


def test_client_refuses_tls_with_a_channel_of_its_own() -> None:
    """A client given both a channel and tls refuses, rather than ignore the tls it was asked for."""
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(ValueError, match="give tls or channel, not both"):
            SyncClient("127.0.0.1:1", channel=channel, tls=TlsSettings())
    finally:
        channel.close()


class _Seen(grpc.ServerInterceptor):
    """Writes down the metadata of every call it sees (the calls themselves find no method)."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str | bytes]] = []

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        self.metadata.append(dict(handler_call_details.invocation_metadata or ()))
        return continuation(handler_call_details)


def test_client_sends_its_token() -> None:
    """A client given a token sends `authorization: Bearer <token>` on every call; a bad token is refused at once."""
    seen = _Seen()
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[seen])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with SyncClient(f"127.0.0.1:{port}", token=TOKEN, retry=_ONCE) as client, pytest.raises(TurnoutError):
            client.get("k")
    finally:
        server.stop(None).wait(10)
    assert seen.metadata[0]["authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(ValueError, match="token must be one word"):
        SyncClient("127.0.0.1:1", token="two words")


@pytest.mark.parametrize(("cert", "key", "message"), [
    ("server_cert", "client_key", "tls.key_file: {key} is not the key of the certificate in tls.cert_file"),
    ("server_cert", "ca", "tls.key_file: {key} holds no unencrypted PEM private key"),
    ("server_key", "server_key", "tls.cert_file: {cert} holds no PEM certificate"),
])
def test_unusable_certificate_or_key_refuses_to_start(tmp_path: Path, certificates: Certificates, cert: str, key: str,
                                                      message: str) -> None:
    """A key that is not the certificate's, or a file that holds something else, stops `turnout serve` with exit 2."""
    cert_file, key_file = getattr(certificates, cert), getattr(certificates, key)
    config = write_config(tmp_path, MEMORY, MEMORY, tls={"cert_file": str(cert_file), "key_file": str(key_file)})
    done = run_cli(config, "serve", timeout=30)
    assert done.returncode == 2, done.stderr
    assert message.format(cert=cert_file, key=key_file) in done.stderr


def test_unreadable_certificate_refuses_to_start(tmp_path: Path, certificates: Certificates) -> None:
    """A tls.cert_file or tls.key_file that cannot be read stops `turnout serve` with exit 2, naming it."""
    config = write_config(tmp_path, MEMORY, MEMORY,
                          tls={"cert_file": str(tmp_path / "absent.pem"), "key_file": str(certificates.server_key)})
    done = run_cli(config, "serve", timeout=30)
    assert done.returncode == 2, done.stderr
    assert "tls.cert_file:" in done.stderr

