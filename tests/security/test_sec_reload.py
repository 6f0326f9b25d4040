"""Re-render as root, then reload: mosquitto (user mosquitto) can still read every file, and --apply proves it.

Before: any re-render (`broker-config`, `provision --broker-dir`, `registry ... --broker-dir`) rewrote `passwd`
as root:0600; at the next SIGHUP mosquitto, running as user mosquitto, could not read it and disconnected the
whole fleet and the collector. Played here as in production: mosquitto started as root switches to the user
mosquitto, the files belong to it as the runbook says, and the re-renders run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prov_helpers import Probe, Refused, RenderedBroker, connect, wait_refused
from sec_helpers import A, B, kerbside, settings_env, topic

from kerbside.devstack import CollectorProcess, free_port
from kerbside.provisioning.broker import INGEST_USER

MOSQUITTO = "mosquitto"
SECOND = "collector-2"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


pytestmark = [pytest.mark.services,
              pytest.mark.skipif(os.geteuid() != 0 or not _has_user(MOSQUITTO),
                                 reason="needs root and a user mosquitto: mosquitto must switch users as in production")]


@dataclass
class Site:
    broker: RenderedBroker
    collector: CollectorProcess
    node: Probe
    env: dict[str, str]

    def reloaded(self) -> bool:
        """Whether the running broker has read the files --apply wrote (they add the account SECOND)."""
        try:
            connect(self.broker.plain_port, SECOND, self.broker.secret(SECOND), client_id=SECOND).close()
        except Refused:
            return False
        return True

    def owner_and_mode(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for path in self.broker.dir.files.read_by_mosquitto():
            st = path.stat()
            out[path.name] = (st.st_uid, st.st_gid, st.st_mode & 0o777)
        return out

    def unharmed(self) -> None:
        """The collector never lost its connection, and the node is still connected and gets its commands."""
        assert "disconnected from the broker" not in self.collector.log.read_text()
        assert self.node.disconnects.empty() and self.node.client.is_connected()
        op = self.broker.operator()
        op.publish(topic(A, "cmd"), b"still there?")
        op.close()
        assert self.node.take(1) == [(topic(A, "cmd"), b"still there?")]


@pytest.fixture
def site(influxd, influx) -> Iterator[Site]:  # type: ignore[no-untyped-def]
    root = Path(tempfile.mkdtemp(prefix="kerbside-sec-reload-", dir="/tmp"))
    root.chmod(0o755)  # pytest's own temp directories are 0700: mosquitto could not even enter them
    rb = RenderedBroker.create(root, (A, B), system_user=MOSQUITTO)
    uid, gid = pwd.getpwnam(MOSQUITTO).pw_uid, pwd.getpwnam(MOSQUITTO).pw_gid
    os.chown(rb.settings.state_dir, uid, gid)
    f = rb.dir.files
    for secret in (f.password_file, f.internal_password_file, f.keyfile):  # the runbook: chown mosquitto ...
        os.chown(secret, uid, gid)
        secret.chmod(0o600)
    rb.start()
    col = CollectorProcess("collector", root / "collector", free_port(), settings={
        "mqtt": {"url": f"mqtt://127.0.0.1:{rb.plain_port}", "client_id": INGEST_USER, "username": INGEST_USER,
                 "password": rb.secret(INGEST_USER)},
        "influx": {"url": influxd.url, "db": influx.db}, "spool": {"dir": root / "collector" / "spool"}}).start()
    node = rb.node(A, clean=False)
    node.subscribe(topic(A, "cmd"))
    # --apply also adds a second collector's account: only a reload makes the broker accept it.
    env = settings_env(rb, http={"port": col.port})
    env["KERBSIDE_BROKER_INGEST_USERS"] = f"{INGEST_USER},{SECOND}"
    try:
        yield Site(rb, col, node, env)
    finally:
        node.close()
        col.stop()
        rb.stop()
        shutil.rmtree(root)


def test_every_re_render_keeps_owner_and_mode_and_the_reload_harms_no_one(site: Site) -> None:
    """Row 7: registry rotate and decommission with --broker-dir, then broker-config --apply, all as root."""
    before = site.owner_and_mode()
    assert before["passwd"][:2] == (pwd.getpwnam(MOSQUITTO).pw_uid, pwd.getpwnam(MOSQUITTO).pw_gid)
    broker_dir = str(site.broker.dir.root)
    for command in (["registry", "rotate", B, "--broker-dir", broker_dir],
                    ["registry", "decommission", B, "--yes", "--broker-dir", broker_dir]):
        passwd = site.broker.dir.files.password_file.read_text()
        r = kerbside(site.env, *command)
        assert r.exit_code == 0, r.output
        assert site.broker.dir.files.password_file.read_text() != passwd  # it was re-rendered ...
        assert site.owner_and_mode() == before  # ... and mosquitto can still read it
        site.broker.hup()
        wait_refused(site.broker.tls_port, B, site.broker.secrets[B], site.broker.ca)  # the reload took it in
    r = kerbside(site.env, "broker-config", "--apply")
    assert r.exit_code == 0, r.output
    assert "the broker accepts kerbside-operator after the reload" in r.output
    assert "connected and subscribed after the reload" in r.output
    assert site.owner_and_mode() == before
    assert site.reloaded()
    site.unharmed()


def test_apply_does_not_reload_files_mosquitto_cannot_read(site: Site) -> None:
    """A password file that is root:0600 (made by hand, restored from a backup) is caught before the SIGHUP."""
    internal = site.broker.dir.files.internal_password_file
    os.chown(internal, 0, 0)
    r = kerbside(site.env, "broker-config", "--apply")
    assert r.exit_code == 1, r.output
    text = " ".join(r.output.split())
    assert "mosquitto cannot read it (root:root 0600): chown mosquitto" in text and "not reloaded" in text, text
    assert "mosquitto did not start on the rendered files" in text  # the throwaway broker, as user mosquitto, agrees
    assert not site.reloaded()
    site.unharmed()
    os.chown(internal, pwd.getpwnam(MOSQUITTO).pw_uid, -1)
    r = kerbside(site.env, "broker-config", "--apply")
    assert r.exit_code == 0, r.output
    assert site.reloaded()
    site.unharmed()
