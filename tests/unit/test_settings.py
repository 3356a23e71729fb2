"""Server settings: flags over environment over defaults, typed, validated, and documented."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import REPO_ROOT
from visinspect_server.grpc.security import ServerSecurity, TokenAuthInterceptor, parse_tokens, read_token_file
from visinspect_server.local import LocalServer, read_ready_file
from visinspect_server.main import write_ready_file
from visinspect_server.settings import ServerSettings, add_arguments, settings_from


def parse(argv: list[str], environ: dict[str, str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from(parser.parse_args(argv), environ)


def test_defaults() -> None:
    settings = parse(["--model-repository", "repo"], {})
    assert settings.model_repository == Path("repo")
    assert (settings.port, settings.performance_hint, settings.image_root) == (50051, "LATENCY", None)


def test_flag_beats_environment_beats_default() -> None:
    environ = {"VISINSPECT_MODEL_REPOSITORY": "/env/repo", "VISINSPECT_PORT": "7000", "VISINSPECT_MAX_PIXELS": "1000"}
    settings = parse(["--port", "8000"], environ)
    assert settings.model_repository == Path("/env/repo")
    assert settings.port == 8000
    assert settings.max_pixels == 1000


def test_types_are_converted() -> None:
    settings = parse(
        ["--model-repository", "r", "--models", "a, b", "--log-json", "false", "--poll-interval-s", "0.5",
         "--performance-hint", "throughput", "--image-root", "/data"],
        {},
    )  # fmt: skip
    assert settings.models == ("a", "b")
    assert settings.log_json is False
    assert settings.poll_interval_s == 0.5
    assert settings.performance_hint == "THROUGHPUT"
    assert settings.image_root == Path("/data")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--model-repository"),
        (["--model-repository", "r", "--port", "http"], "port must be a number"),
        (["--model-repository", "r", "--port", "70000"], "invalid setting port"),
        (["--model-repository", "r", "--log-json", "maybe"], "log_json must be true or false"),
        (["--model-repository", "r", "--performance-hint", "fast"], "invalid setting performance_hint"),
        (["--model-repository", "r", "--max-pixels", "0"], "invalid setting max_pixels"),
        (["--model-repository", "r", "--max-concurrent-streams", "0"], "invalid setting max_concurrent_streams=0"),
        (["--model-repository", "r", "--tls-cert", "c.pem"], "tls_cert and tls_key go together"),
        (["--model-repository", "r", "--tls-key", "k.pem"], "tls_cert and tls_key go together"),
        (["--model-repository", "r", "--tls-client-ca", "ca.pem"], r"tls_client_ca \(mutual TLS\) needs tls_cert"),
        (["--model-repository", "r", "--auth-tokens", "a,b c"], "auth_tokens must be non-empty and free of white"),
    ],
)
def test_invalid_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(argv, {})


def test_every_setting_is_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for spec in fields(ServerSettings):
        assert f"`--{spec.name.replace('_', '-')}` | `VISINSPECT_{spec.name.upper()}`" in readme, spec.name


def test_security_settings() -> None:
    assert parse(["--model-repository", "r"], {}).max_concurrent_streams == 100
    environ = {"VISINSPECT_AUTH_TOKENS": " first , second,, ", "VISINSPECT_TLS_CLIENT_CA": "~/ca.pem"}
    settings = parse(
        ["--model-repository", "r", "--tls-cert", "/etc/c.pem", "--tls-key", "/etc/k.pem",
         "--auth-tokens-file", "/etc/tokens", "--max-concurrent-streams", "8"],
        environ,
    )  # fmt: skip
    assert (settings.tls_cert, settings.tls_key) == (Path("/etc/c.pem"), Path("/etc/k.pem"))
    assert settings.tls_client_ca == Path.home() / "ca.pem"
    assert settings.auth_tokens_file == Path("/etc/tokens")
    assert settings.auth_tokens == ("first", "second")
    assert settings.max_concurrent_streams == 8
    assert "first" not in repr(settings) and "second" not in repr(settings)  # tokens stay out of logs


def test_parse_tokens_skips_comments_and_blank_lines() -> None:
    lines = ["# cameras of line 1", "", "  alpha  ", "\t# indented comment", "beta", "   "]
    assert parse_tokens(lines) == ("alpha", "beta")
    assert parse_tokens([]) == ()
    with pytest.raises(ValueError, match="^line 3: a token may not contain white space$"):
        parse_tokens(["a", "# b c", "d e"])


def test_read_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("one\n# two\nthree\n")
    assert read_token_file(path) == ("one", "three")
    path.write_text("# none yet\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        read_token_file(path)
    path.write_bytes(b"\xff\xfe token")
    with pytest.raises(ValueError, match="cannot read auth_tokens_file"):
        read_token_file(path)
    with pytest.raises(ValueError, match="No such file or directory"):
        read_token_file(tmp_path / "missing")


def test_server_security_from_settings(tmp_path: Path) -> None:
    plain = ServerSecurity.from_settings(ServerSettings(tmp_path))
    assert (plain.credentials, plain.tokens, plain.interceptors()) == (None, (), [])
    assert plain.describe() == "plaintext, no tokens"
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("shared\nfrom-file\n")
    settings = ServerSettings(tmp_path, auth_tokens=("shared", "from-env"), auth_tokens_file=tokens_file)
    security = ServerSecurity.from_settings(settings)
    assert security.tokens == (b"shared", b"from-env", b"from-file")
    assert security.describe() == "plaintext, bearer tokens (3)"
    assert [type(interceptor) for interceptor in security.interceptors()] == [TokenAuthInterceptor]
    assert "from-env" not in repr(security)


def test_unusable_pem_files_are_reported(tmp_path: Path) -> None:
    text = tmp_path / "text.pem"
    text.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cases = [
        (ServerSettings(tmp_path, tls_cert=missing, tls_key=text), f"cannot read tls_cert '{missing}': No such file"),
        (ServerSettings(tmp_path, tls_cert=text, tls_key=text), f"tls_cert '{text}' is not a PEM certificate"),
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=f"^{message}"):
            ServerSecurity.from_settings(settings)
    with pytest.raises(ValueError, match="at least one token"):
        TokenAuthInterceptor(())


def test_ready_file_from_flag_or_environment() -> None:
    assert parse(["--model-repository", "r"], {}).ready_file is None
    assert parse(["--model-repository", "r", "--ready-file", "~/up.json"], {}).ready_file == Path.home() / "up.json"
    environ = {"VISINSPECT_READY_FILE": "/run/env.json"}
    assert parse(["--model-repository", "r"], environ).ready_file == Path("/run/env.json")
    flag = parse(["--model-repository", "r", "--ready-file", "/run/flag.json"], environ)
    assert flag.ready_file == Path("/run/flag.json")


def test_ready_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "ready.json"
    path.write_text("left by an earlier run")
    document = {"pid": 7, "port": 50051, "metrics_port": None, "host": "0.0.0.0"}
    write_ready_file(path, document)
    assert read_ready_file(path) == document
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left behind


def test_a_launched_server_announces_itself_in_its_ready_file(tmp_path: Path) -> None:
    """The launcher (visinspect_server.local) passes --ready-file and takes the ports from it; an empty repository
    serves nothing, so the server is up at once (NOT_SERVING)."""
    (tmp_path / "empty").mkdir()
    server = LocalServer(tmp_path / "empty").start(wait_serving=False)
    try:
        assert server.ready == {"pid": server.pid, "port": server.port, "metrics_port": server.metrics_port,
                                "host": "127.0.0.1"}  # fmt: skip
        assert server.port > 0 and server.metrics_port > 0
        assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert any(entry["message"].startswith("listening on port") for entry in server.logs)  # printed before
    finally:
        assert server.stop() == 0


def test_a_server_that_exits_before_it_is_ready_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"exited with status 2 before it was ready.*invalid setting port=70000"):
        LocalServer(tmp_path, ["--port", "70000"]).start()
