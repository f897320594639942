"""The compose broker's entrypoint (infra/kafka/compose-start.sh) run here with the pinned Kafka jars in place
of the image's: the config it renders is one Kafka's storage tool formats, with the SCRAM users of every
service, and it hands that config to the broker. (No Docker engine here: the broker itself is not started;
tests/integration/test_secured_infra.py runs a SASL/SCRAM broker for real through infra/kafka.sh.)"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from infra.local import INFRA_DIR, KAFKA_VERSION
from tests.support import start_or_fail

pytestmark = pytest.mark.integration

USERS = ("admin", "api", "worker", "learner")


def kafka_libs() -> Path:
    libs = Path(os.environ.get("PULSE_CACHE_DIR", INFRA_DIR / ".cache")) / f"kafka-{KAFKA_VERSION}" / "libs"
    if not (libs / ".complete").is_file():
        subprocess.run(["bash", str(INFRA_DIR / "kafka.sh"), "install"], check=True, timeout=600)
    return libs


def fake_image(tmp_path: Path, libs: Path) -> Path:
    """``$KAFKA_BIN`` of the image: the real storage tool; a broker start that only records its config."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kafka-storage.sh").write_text(
        "#!/bin/sh\nexec java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
        f"-Dlog4j2.configurationFile={INFRA_DIR / 'kafka' / 'log4j2.properties'} -Dpulse.kafka.log.level=WARN "
        f"-cp '{libs}/*' kafka.tools.StorageTool \"$@\"\n")
    (bin_dir / "kafka-server-start.sh").write_text(f'#!/bin/sh\necho "$@" >"{tmp_path}/started"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    return bin_dir


def run(tmp_path: Path, **passwords: str) -> subprocess.CompletedProcess[str]:
    libs = start_or_fail("the Kafka jars", kafka_libs)
    env = {**os.environ, "KAFKA_BIN": str(fake_image(tmp_path, libs)), "KAFKA_DATA": str(tmp_path / "data"),
           "PULSE_KAFKA_CONF": str(tmp_path / "conf"), "CLUSTER_ID": "cHVsc2UtdGVzdC1jbHVzdA", **passwords}
    return subprocess.run(["sh", str(INFRA_DIR / "kafka" / "compose-start.sh")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_rendered_config_formats_with_every_services_scram_user(tmp_path: Path) -> None:
    passwords = {f"KAFKA_{u.upper()}_PASSWORD": secrets.token_hex(16) for u in USERS}
    out = run(tmp_path, **passwords)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    props = tmp_path / "conf" / "server.properties"
    assert (tmp_path / "started").read_text().split() == [str(props)]  # the broker gets that config
    assert (tmp_path / "data" / "meta.properties").is_file()
    checkpoint = (tmp_path / "data" / "bootstrap.checkpoint").read_bytes()  # SCRAM records of the format
    assert all(user.encode() in checkpoint for user in USERS)
    assert all(p.encode() not in checkpoint for p in passwords.values())  # salted hashes only
    text = props.read_text()
    protocols = "INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
    assert f"listener.security.protocol.map={protocols}" in text
    assert oct(props.stat().st_mode & 0o777) == "0o600"  # it holds the admin's password (JAAS)
    admin = (tmp_path / "conf" / "admin.properties").read_text()
    assert "security.protocol=SASL_PLAINTEXT" in admin and passwords["KAFKA_ADMIN_PASSWORD"] in admin


@pytest.mark.parametrize(("password", "expected"), [
    ("CHANGE_ME", "KAFKA_API_PASSWORD must be set to a random secret"),
    ("", "KAFKA_API_PASSWORD must be set to a random secret"),
    ("a,b]c", "KAFKA_API_PASSWORD may hold only"),
])
def test_bad_passwords_stop_it_before_anything_is_written(tmp_path: Path, password: str, expected: str) -> None:
    passwords = {f"KAFKA_{u.upper()}_PASSWORD": secrets.token_hex(16) for u in USERS}
    out = run(tmp_path, **{**passwords, "KAFKA_API_PASSWORD": password})
    assert out.returncode == 1 and expected in out.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "started").exists()
