"""Kafka security settings: validated together, and their secrets never shown.

No servers: the broker-facing side is in tests/integration/test_kafka_security.py."""

from __future__ import annotations

import json
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from badge_worker import logs
from badge_worker.adapters.kafka_io import client_options
from badge_worker.settings import Settings

PASSWORD = "sasl-pw-7f3a9c"  # distinctive, so that any leak is found by a plain substring search
KEY_PASSWORD = "key-pw-41be0d"
SASL: dict[str, Any] = dict(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="svc-badges", kafka_sasl_password=PASSWORD)


def secured(tmp_path: Path) -> Settings:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read by Settings\n")
    return Settings(**{**SASL, "kafka_security_protocol": "SASL_SSL"}, kafka_ssl_cafile=str(ca),
                    kafka_ssl_certfile=str(ca), kafka_ssl_keyfile=str(ca), kafka_ssl_key_password=KEY_PASSWORD)


def test_repr_dumps_and_logs_never_hold_the_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = secured(tmp_path)
    shown = [repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(), default=str), str(s.model_dump())]
    logs.configure("DEBUG")
    try:
        structlog.get_logger("badge_worker.test").info("settings", settings=s, password=s.kafka_sasl_password)
        logging.getLogger("badge_worker.test.stdlib").warning("settings %s %r", s, s.kafka_ssl_key_password)
        logged = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
    assert len(logged.splitlines()) == 2 and "svc-badges" in logged  # the lines were written, with the user
    for text in [*shown, logged]:
        assert PASSWORD not in text and KEY_PASSWORD not in text
        assert "**********" in text
    # the real values are still there for the clients
    assert s.kafka_sasl_password is not None and s.kafka_sasl_password.get_secret_value() == PASSWORD


def test_sasl_without_credentials_is_a_clear_settings_error() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc-badges")
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD" in str(refused.value)
    with pytest.raises(ValidationError, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValidationError, match="needs KAFKA_SASL_PASSWORD"):
        Settings(**{**SASL, "kafka_sasl_password": ""})


def test_settings_that_would_be_ignored_or_cannot_work_are_refused_without_showing_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(kafka_sasl_username="svc-badges", kafka_sasl_password=PASSWORD)  # PLAINTEXT: would be unused
    assert "does not use SASL" in str(refused.value) and PASSWORD not in str(refused.value)
    assert PASSWORD not in repr(refused.value.errors(include_input=False))
    with pytest.raises(ValidationError, match="does not use TLS"):
        Settings(**SASL, kafka_ssl_cafile=str(tmp_path))
    with pytest.raises(ValidationError, match=r"KAFKA_SSL_CAFILE=\S+/missing.pem: no such file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "missing.pem"))
    pem = tmp_path / "client.pem"
    pem.write_text("x")
    with pytest.raises(ValidationError, match="KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_keyfile=str(pem))
    with pytest.raises(ValidationError, match="Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"):
        Settings.model_validate({"kafka_security_protocol": "SASL"})
    with pytest.raises(ValidationError, match="'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"):
        Settings(**{**SASL, "kafka_sasl_mechanism": "GSSAPI"})


def test_client_options_per_protocol() -> None:
    assert client_options(Settings(kafka_bootstrap_servers="k1:9092,k2:9092")) == {
        "bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    sasl = client_options(Settings(**SASL))
    assert sasl == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_PLAINTEXT",
                    "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc-badges",
                    "sasl_plain_password": PASSWORD}
    tls = client_options(Settings(kafka_security_protocol="SSL"))  # the system's CAs
    context = tls.pop("ssl_context")
    assert tls == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SSL"}
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_cli_refuses_bad_settings_with_one_json_line_and_exit_78() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.update(KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_USERNAME="svc-badges",
               KAFKA_SASL_MECHANISM="SCRAM-SHA-256", KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD)
    done = subprocess.run([sys.executable, "-m", "badge_worker.cli", "run"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 78, done.stderr
    (line,) = [json.loads(text) for text in done.stderr.splitlines()]
    assert line["event"] == "invalid_settings" and line["level"] == "error"
    assert "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_PASSWORD" in line["errors"][0]
    assert KEY_PASSWORD not in done.stderr + done.stdout
