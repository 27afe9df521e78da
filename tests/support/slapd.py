"""A real OpenLDAP ``slapd`` for tests: two trees, LDAP + LDAPS on free loopback ports.

- ``dc=corp,dc=example`` looks like Active Directory: our own schema gives ``user`` and
  ``group`` classes with AD's attribute names (``sAMAccountName``, ``userPrincipalName``,
  ``userAccountControl``, binary ``objectGUID``, ``department``), and the memberof overlay
  maintains ``memberOf`` like a DC does.
- ``dc=example,dc=org`` is a plain OpenLDAP tree (inetOrgPerson, groupOfNames,
  groupOfUniqueNames, posixGroup; ``entryUUID`` identifies entries).

A test CA (made with ``cryptography``) signs the server certificate for 127.0.0.1/localhost.
``start_slapd(workdir)`` starts one in well under a second; ``Slapd.kill()`` and
``Slapd.restart()`` let a test take the server away mid-sync. ``Slapd.load_ldif_offline``
feeds ``slapadd`` for bulk benchmark data.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ldap
import ldap.modlist
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMA_DIR = Path("/etc/ldap/schema")
AD_BASE = "dc=corp,dc=example"
LDAP_BASE = "dc=example,dc=org"
ROOT_PASSWORD = "root-secret"
SYNC_PASSWORD = "sync-secret"

# AD attribute names on our own OIDs (a private arc), close enough to AD for a sync client.
AD_SCHEMA = """
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'sAMAccountName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.2 NAME 'userPrincipalName'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.3 NAME 'userAccountControl'
  EQUALITY integerMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.27 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.4 NAME 'objectGUID'
  EQUALITY octetStringMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.5 NAME 'department'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.6 NAME 'company'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'user' SUP inetOrgPerson STRUCTURAL
  MAY ( sAMAccountName $ userPrincipalName $ userAccountControl $ objectGUID $
        department $ company ) )
objectclass ( 1.3.6.1.4.1.99999.2.3 NAME 'computer' SUP user STRUCTURAL )
objectclass ( 1.3.6.1.4.1.99999.2.2 NAME 'group' SUP top STRUCTURAL
  MUST cn MAY ( member $ sAMAccountName $ objectGUID $ description ) )
"""


@dataclass
class Slapd:
    workdir: Path
    port: int
    ldaps_port: int
    process: subprocess.Popen[bytes] | None = None
    ca_pem: str = ""
    _args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @staticmethod
    def root_dn(base: str) -> str:
        return f"cn=admin,{base}"

    @staticmethod
    def sync_dn(base: str) -> str:
        return f"cn=sync,{base}"

    def connect(self, base: str = AD_BASE) -> ldap.ldapobject.LDAPObject:
        conn = ldap.initialize(self.url)
        conn.protocol_version = 3
        conn.simple_bind_s(self.root_dn(base), ROOT_PASSWORD)
        return conn

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"slapd exited with {self.process.returncode}: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("slapd did not start listening within 20 s")

    def kill(self) -> None:
        """Take the server away at once, as a crash or a network cut would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    # Data ------------------------------------------------------------------------------------

    def add(self, dn: str, attrs: dict[str, Sequence[str | bytes]]) -> None:
        conn = self.connect(_suffix(dn))
        try:
            conn.add_s(dn, ldap.modlist.addModlist(_encode(attrs)))
        finally:
            conn.unbind_s()

    def modify(self, dn: str, changes: dict[str, Sequence[str | bytes] | None]) -> None:
        """Replace (or, for None, delete) each attribute."""
        conn = self.connect(_suffix(dn))
        mods = []
        for name, values in changes.items():
            if values is None:
                mods.append((ldap.MOD_DELETE, name, None))
            else:
                mods.append((ldap.MOD_REPLACE, name, [_bytes(v) for v in values]))
        try:
            conn.modify_s(dn, mods)
        finally:
            conn.unbind_s()

    def rename(self, dn: str, new_rdn: str, new_superior: str | None = None) -> None:
        conn = self.connect(_suffix(dn))
        try:
            conn.rename_s(dn, new_rdn, new_superior)
        finally:
            conn.unbind_s()

    def delete(self, dn: str) -> None:
        conn = self.connect(_suffix(dn))
        try:
            conn.delete_s(dn)
        finally:
            conn.unbind_s()

    def new_ou(self, base: str = AD_BASE, name: str | None = None) -> str:
        """A fresh OU of its own for one test, so tests sharing the server never meet."""
        ou = name or f"t{uuid.uuid4().hex[:10]}"
        dn = f"ou={ou},{base}"
        self.add(dn, {"objectClass": ["organizationalUnit"], "ou": [ou]})
        return dn

    def add_ad_user(
        self,
        parent: str,
        sam: str,
        *,
        mail: str | Sequence[str] | None = "",
        display_name: str | None = None,
        disabled: bool = False,
        department: str | None = None,
        guid: uuid.UUID | None = None,
        upn_domain: str = "corp.example",
    ) -> str:
        dn = f"cn={sam},{parent}"
        attrs: dict[str, Sequence[str | bytes]] = {
            "objectClass": ["user"],
            "cn": [sam],
            "sn": [sam],
            "sAMAccountName": [sam],
            "userPrincipalName": [f"{sam}@{upn_domain}"],
            "userAccountControl": [str(512 | (2 if disabled else 0))],
            "objectGUID": [(guid or uuid.uuid4()).bytes_le],
            "displayName": [display_name or sam.title()],
        }
        if mail == "":
            attrs["mail"] = [f"{sam}@corp.example"]
        elif mail is not None:
            attrs["mail"] = [mail] if isinstance(mail, str) else list(mail)
        if department:
            attrs["department"] = [department]
        self.add(dn, attrs)
        return dn

    def add_ad_group(self, parent: str, name: str, members: Iterable[str] = ()) -> str:
        dn = f"cn={name},{parent}"
        attrs: dict[str, Sequence[str | bytes]] = {
            "objectClass": ["group"],
            "cn": [name],
            "sAMAccountName": [name],
            "objectGUID": [uuid.uuid4().bytes_le],
        }
        if members:
            attrs["member"] = list(members)
        self.add(dn, attrs)
        return dn

    def add_members(self, group_dn: str, members: Iterable[str]) -> None:
        conn = self.connect(_suffix(group_dn))
        try:
            conn.modify_s(group_dn, [(ldap.MOD_ADD, "member", [m.encode() for m in members])])
        finally:
            conn.unbind_s()

    def load_ldif_offline(self, ldif: Path, base: str) -> None:
        """Bulk-load with ``slapadd`` (server stopped; the memberof overlay does not run)."""
        self.stop()
        subprocess.run(
            [
                str(SLAPADD),
                "-q",
                "-f",
                str(self.workdir / "slapd.conf"),
                "-b",
                base,
                "-l",
                str(ldif),
            ],
            check=True,
            capture_output=True,
        )
        self.start()


def _suffix(dn: str) -> str:
    return AD_BASE if dn.lower().endswith(AD_BASE) else LDAP_BASE


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _encode(attrs: dict[str, Sequence[str | bytes]]) -> dict[str, list[bytes]]:
    return {k: [_bytes(v) for v in vs] for k, vs in attrs.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_test_ca(workdir: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server.key): a CA and a server cert for 127.0.0.1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetkeep test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (workdir / "ca.pem", workdir / "server.pem", workdir / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(paths[2], 0o600)
    return paths


def _database(base: str, dbdir: Path, memberof: bool) -> str:
    dbdir.mkdir(parents=True, exist_ok=True)
    overlay = (
        "overlay memberof\n"
        "memberof-group-oc group\n"
        "memberof-member-ad member\n"
        "memberof-memberof-ad memberOf\n"
        "memberof-refint TRUE\n"
        "memberof-dangling ignore\n"
        if memberof
        else ""
    )
    return f"""
database mdb
suffix "{base}"
rootdn "cn=admin,{base}"
rootpw {ROOT_PASSWORD}
directory {dbdir}
maxsize 2147483648
# Test data needs no durability; without this every add waits for an fsync.
dbnosync
index objectClass eq
index entryUUID eq
limits dn.exact="cn=limited,{base}" size=3 size.prtotal=3
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
{overlay}"""


def start_slapd(workdir: Path) -> Slapd:
    """Configure and start a slapd in ``workdir``; the caller stops it."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = make_test_ca(workdir)
    (workdir / "ad.schema").write_text(AD_SCHEMA)
    schemas = "\n".join(
        f"include {SCHEMA_DIR / name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")
    )
    config = f"""{schemas}
include {workdir / "ad.schema"}
pidfile {workdir / "slapd.pid"}
argsfile {workdir / "slapd.args"}
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
sizelimit size.soft=500 size.hard=unlimited size.prtotal=unlimited
{_database(AD_BASE, workdir / "ad-db", memberof=True)}
{_database(LDAP_BASE, workdir / "ldap-db", memberof=False)}
"""
    (workdir / "slapd.conf").write_text(config)
    port, ldaps_port = _free_port(), _free_port()
    server = Slapd(workdir, port, ldaps_port, ca_pem=ca.read_text())
    server._args = [
        str(SLAPD),
        "-f",
        str(workdir / "slapd.conf"),
        "-h",
        f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{ldaps_port}/",
        "-d",
        "0",
    ]
    server.start()
    for base, dc in ((AD_BASE, "corp"), (LDAP_BASE, "example")):
        server.add(base, {"objectClass": ["dcObject", "organization"], "dc": [dc], "o": [dc]})
        for name, password in (("sync", SYNC_PASSWORD), ("limited", SYNC_PASSWORD)):
            server.add(
                f"cn={name},{base}",
                {
                    "objectClass": ["simpleSecurityObject", "organizationalRole"],
                    "cn": [name],
                    "userPassword": [password],
                },
            )
    return server
