"""Syncing from a real Active Directory: a Samba AD DC provisioned on a loopback address.

Skipped where Samba (Debian package ``samba``), ``ip`` or root are missing. A DC always
listens on the standard ports (389, 636, 3268, 3269), so each test process gives its DC an
address of its own (``127.0.0.N``, added to ``lo`` for the session and removed after): xdist
workers and concurrent runs never collide, and nothing on 127.0.0.1 is touched. Provisioning
takes about 20 seconds, once per test process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import ldap
import ldap.modlist
import pytest
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.directories import ldap as ldap_source
from fleetkeep.directories import service
from fleetkeep.directories.models import DirectoryKind, SyncStatus
from fleetkeep.identity.models import UserState
from tests.directories.conftest import ACTOR, users_by_name

REALM, DOMAIN, BASE = "CORP.TEST", "CORP", "DC=corp,DC=test"
ADMIN_DN = f"CN=Administrator,CN=Users,{BASE}"
ADMIN_PASSWORD = "Fleet-keep-Adm1n!"
# Addresses tried in turn; a lock file per address tells which ones a test process holds.
ADDRESSES = [f"127.0.0.{n}" for n in range(100, 132)]
LDAP_PORTS = (389, 636, 3268, 3269)

pytestmark = pytest.mark.skipif(
    shutil.which("samba-tool") is None
    or shutil.which("samba") is None
    or shutil.which("ip") is None
    or os.geteuid() != 0,
    reason="needs Samba (apt-get install samba), iproute2 and root (a DC binds port 389)",
)


def _port_free(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) != 0


def _claim_address() -> tuple[str, IO[str]]:
    """The first loopback address no other test process holds and nothing listens on."""
    for address in ADDRESSES:
        lock = open(f"/tmp/fleetkeep-test-samba-{address}.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if all(_port_free(address, port) for port in LDAP_PORTS):
            return address, lock
        lock.close()
    pytest.skip("no free loopback address for a Samba DC")


@dataclass
class SambaDC:
    address: str
    process: subprocess.Popen[bytes]

    def connect(self) -> ldap.ldapobject.LDAPObject:
        conn = ldap.initialize(f"ldap://{self.address}:389")
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.simple_bind_s(ADMIN_DN, ADMIN_PASSWORD)
        return conn

    def add_many(self, entries: list[tuple[str, dict[str, list[bytes]]]]) -> None:
        """Pipelined adds: send them all, then collect the results."""
        conn = self.connect()
        ids = [conn.add_ext(dn, ldap.modlist.addModlist(attrs)) for dn, attrs in entries]
        for msgid in ids:
            conn.result(msgid)
        conn.unbind_s()

    def modify(self, dn: str, mods: list[tuple[int, str, list[bytes] | None]]) -> None:
        conn = self.connect()
        conn.modify_s(dn, mods)
        conn.unbind_s()


def _provision(target: Path, address: str) -> Path:
    started = time.monotonic()
    subprocess.run(
        [
            "samba-tool", "domain", "provision", "--use-rfc2307", f"--realm={REALM}",
            f"--domain={DOMAIN}", "--server-role=dc", "--dns-backend=NONE",
            f"--targetdir={target}", f"--adminpass={ADMIN_PASSWORD}", f"--host-ip={address}",
            f"--option=interfaces={address}", "--option=bind interfaces only=yes",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"provisioning took {elapsed:.0f} s"
    conf = target / "etc" / "smb.conf"
    lines = [
        line
        for line in conf.read_text().splitlines()
        if not line.strip().startswith(("server services", "log file"))
    ]
    extra = [
        "\tserver services = ldap",
        "\tldap server require strong auth = no",
        # No LDAPS here (its self-signed certificate names the host, not this address), which
        # also spares generating a key at start-up.
        "\ttls enabled = no",
        # Per-DC run-time paths: by default they are machine-wide (/run/samba), and a second
        # DC would find the first one's pid file and refuse to start.
        f"\tpid directory = {target}",
        f"\tncalrpc dir = {target}/ncalrpc",
        f"\twinbindd socket directory = {target}/winbindd",
        f"\tntp signd socket directory = {target}/ntp_signd",
        f"\tlog file = {target}/log.%m",
    ]
    conf.write_text("\n".join(lines[:2] + extra + lines[2:]) + "\n")
    return conf


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    address, lock = _claim_address()
    added = subprocess.run(
        ["ip", "address", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True
    )
    if added.returncode != 0 and "File exists" not in added.stderr:
        lock.close()
        pytest.skip(f"cannot add {address} to lo: {added.stderr.strip()}")
    process: subprocess.Popen[bytes] | None = None
    try:
        conf = _provision(tmp_path_factory.mktemp("samba") / "dc", address)
        output = conf.parent / "samba.out"
        with output.open("wb") as out:
            process = subprocess.Popen(
                ["samba", "-s", str(conf), "-F", "-M", "single", "--no-process-group"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while _port_free(address, 389):
            if time.monotonic() > deadline or process.poll() is not None:
                tail = output.read_text(errors="replace")[-2000:]
                pytest.fail(f"samba did not start listening on {address}:389:\n{tail}")
            time.sleep(0.2)
        yield SambaDC(address, process)
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        subprocess.run(["ip", "address", "del", f"{address}/32", "dev", "lo"], check=False)
        lock.close()


def _ou(dc: SambaDC) -> str:
    name = f"t{uuid.uuid4().hex[:8]}"
    dn = f"OU={name},{BASE}"
    dc.add_many([(dn, {"objectClass": [b"organizationalUnit"], "ou": [name.encode()]})])
    return dn


def _user(parent: str, sam: str, *, disabled: bool = False) -> tuple[str, dict[str, list[bytes]]]:
    # 544 = NORMAL_ACCOUNT | PASSWD_NOTREQD (an enabled account without a password); +2 disables.
    flags = 544 | (2 if disabled else 0)
    return f"CN={sam},{parent}", {
        "objectClass": [b"user"],
        "sAMAccountName": [sam.encode()],
        "userPrincipalName": [f"{sam}@corp.test".encode()],
        "mail": [f"{sam}@corp.test".encode()],
        "displayName": [f"Ünïcode {sam}".encode()],
        "userAccountControl": [str(flags).encode()],
    }


def _group(parent: str, name: str, members: list[str]) -> tuple[str, dict[str, list[bytes]]]:
    attrs: dict[str, list[bytes]] = {
        "objectClass": [b"group"],
        "sAMAccountName": [name.encode()],
    }
    if members:
        attrs["member"] = [m.encode() for m in members]
    return f"CN={name},{parent}", attrs


def _directory(
    dc: SambaDC,
    factory: sessionmaker[Session],
    data_dir: Path,
    base: str,
    group: str,
    places: dict[str, int],
    port: int = 389,
) -> int:
    with factory.begin() as session:
        directory = service.create_directory(
            session,
            ACTOR,
            data_dir,
            name=f"samba-{uuid.uuid4().hex[:6]}",
            kind=DirectoryKind.AD,
            secret=ADMIN_PASSWORD,
            settings={"hosts": [dc.address], "port": port, "bind_dn": ADMIN_DN, "base_dn": base},
            hold_above_percent=100.0,
        )
        service.create_mapping(
            session,
            ACTOR,
            directory.id,
            rule={"type": "group", "group": group},
            profile_id=places["Engineering"],
            storage_region_id=places["region"],
            priority=1,
        )
        service.create_mapping(
            session,
            ACTOR,
            directory.id,
            rule={"type": "all"},
            profile_id=places["Staff"],
            storage_region_id=places["region"],
            priority=2,
        )
        return directory.id


def test_samba_users_nested_groups_and_disabled_accounts_sync(
    samba_dc: SambaDC, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = _ou(samba_dc)
    tag = ou[4:10]  # sAMAccountName is unique in the whole domain
    ann, bob = _user(ou, f"ann{tag}"), _user(ou, f"bob{tag}")
    cid = _user(ou, f"cid{tag}", disabled=True)
    inner = _group(ou, f"inner{tag}", [ann[0]])
    outer = _group(ou, f"outer{tag}", [inner[0]])
    samba_dc.add_many([ann, bob, cid, inner, outer])
    directory_id = _directory(samba_dc, factory, data_dir, ou, f"outer{tag}", places)
    run = service.sync_directory(factory, ACTOR, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    got = {name[:3]: user for name, user in users_by_name(factory).items()}
    assert set(got) == {"ann", "bob"}
    assert got["ann"].profile_id == places["Engineering"]  # via inner ⊂ outer
    assert got["bob"].profile_id == places["Staff"]
    assert got["ann"].display_name == f"Ünïcode ann{tag}"
    assert got["ann"].upn == f"ann{tag}@corp.test"
    assert len(got["ann"].external_id or "") == 36
    samba_dc.modify(bob[0], [(ldap.MOD_REPLACE, "userAccountControl", [b"546"])])
    run = service.sync_directory(factory, ACTOR, data_dir, directory_id)
    assert run.preserved == 1
    assert users_by_name(factory)[f"bob{tag}"].state is UserState.PRESERVED


def test_ranged_member_values_are_completed_from_the_server(
    samba_dc: SambaDC, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    """AD hands out large multi-valued attributes in ranges (``member;range=0-1499``).

    Samba only ranges on request, so the test starts from the first range as AD would send
    it (two of five members) and checks that the reader fetches the rest from the server.
    """
    ou = _ou(samba_dc)
    tag = ou[4:10]
    users = [_user(ou, f"big{i}{tag}") for i in range(5)]
    big = _group(ou, f"big{tag}", [dn for dn, _ in users])
    samba_dc.add_many([*users, big])
    directory_id = _directory(samba_dc, factory, data_dir, ou, big[0], places)
    with factory() as session:
        config = service.ldap_config(service.get_directory(session, directory_id))
    conn = ldap_source.connect(config, ADMIN_PASSWORD)
    try:
        whole = conn.search_s(big[0], ldap.SCOPE_BASE, attrlist=["member"])[0][1]["member"]
        first = conn.search_s(big[0], ldap.SCOPE_BASE, attrlist=["member;range=0-1"])[0][1]
        assert list(first) == ["member;range=0-1"]
        reader = ldap_source._Reader(conn, config, set(), None)
        completed = reader._complete_ranges(big[0], dict(first))
    finally:
        conn.unbind_s()
    assert sorted(completed["member"]) == sorted(whole)
    assert len(whole) == 5


def test_the_global_catalog_port_serves_the_same_users(
    samba_dc: SambaDC, factory: sessionmaker[Session], data_dir: Path, places: dict[str, int]
) -> None:
    ou = _ou(samba_dc)
    tag = ou[4:10]
    dee, eli = _user(ou, f"dee{tag}"), _user(ou, f"eli{tag}", disabled=True)
    team = _group(ou, f"team{tag}", [dee[0]])
    samba_dc.add_many([dee, eli, team])
    directory_id = _directory(samba_dc, factory, data_dir, ou, team[0], places, port=3268)
    run = service.sync_directory(factory, ACTOR, data_dir, directory_id)
    assert run.status is SyncStatus.SUCCEEDED, run.error
    assert (run.seen, run.created, run.skipped) == (2, 1, 1)
    got = users_by_name(factory)[f"dee{tag}"]
    assert got.profile_id == places["Engineering"]
    assert got.upn == f"dee{tag}@corp.test"
