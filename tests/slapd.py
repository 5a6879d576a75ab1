"""A real OpenLDAP `slapd` for tests: its own cn=config and mdb database under a temp dir, on a free loopback port.

Use `start_slapd(root)` (a context manager) or the `slapd` fixture (module scope) after
`from tests.slapd import slapd  # noqa: F401`. The directory holds the suffix `dc=example,dc=org`, users under
`ou=people` (see `USERS`) and groupOfNames under `ou=groups` (see `GROUPS`). Nothing under /etc/ldap is written
or read as configuration: only Debian's schema files and modules are read. The server stops at the end.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from kb.platform import free_port

SUFFIX = "dc=example,dc=org"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS_BASE = f"ou=groups,{SUFFIX}"
USER_DN_TEMPLATE = f"uid={{username}},{PEOPLE}"
# Test-only throwaway passwords for a directory that lives for one test module.
USERS = {"alice": "alice-correct-horse", "bob": "bob-battery-staple", "carol": "carol-no-groups"}
GROUPS = {"kb-devops": ("alice",), "kb-viewers": ("alice", "bob")}
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
START_TIMEOUT_S = 15.0
MISSING = "{what} not found: run `make ldap` (installs Debian's slapd and ldap-utils)"


@dataclass
class Slapd:
    """A running slapd: its URL and process; `stop()` ends it (idempotent)."""

    root: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def ssha(password: str) -> str:
    """The `{SSHA}` userPassword value slapd checks binds against (what `slappasswd -h {SSHA}` writes)."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def config_ldif(root: Path) -> str:
    """cn=config for one mdb database: users read the tree, passwords only serve binds."""
    schemas = "\n".join(f"include: file://{SCHEMA_DIR / name}.ldif" for name in ("core", "cosine", "inetorgperson"))
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {root}/slapd.pid
olcArgsFile: {root}/slapd.args

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_DIR}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcDbDirectory: {root}/data
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none
"""


def data_ldif() -> str:
    """The suffix, the people and the groups."""
    entries = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS_BASE}\nobjectClass: organizationalUnit\nou: groups",
    ]
    for user, password in USERS.items():
        entries.append(
            f"dn: uid={user},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {user.title()}\nsn: {user.title()}\n"
            f"userPassword: {ssha(password)}"
        )
    for group, members in GROUPS.items():
        lines = "\n".join(f"member: uid={m},{PEOPLE}" for m in members)
        entries.append(f"dn: cn={group},{GROUPS_BASE}\nobjectClass: groupOfNames\ncn: {group}\n{lines}")
    return "\n\n".join(entries) + "\n"


def _require_tools() -> tuple[str, str]:
    """slapd and slapadd, or a failure that says how to get them (never a skip)."""
    slapd, slapadd = shutil.which("slapd") or "/usr/sbin/slapd", shutil.which("slapadd") or "/usr/sbin/slapadd"
    for what, path in (("slapd", slapd), ("slapadd", slapadd)):
        if not os.access(path, os.X_OK):
            pytest.fail(MISSING.format(what=what))
    if not (MODULE_DIR / "back_mdb.so").exists():
        pytest.fail(MISSING.format(what=str(MODULE_DIR / "back_mdb.so")))
    return slapd, slapadd


def _slapadd(slapadd: str, root: Path, database: str, ldif: str) -> None:
    path = root / f"load-{database}.ldif"
    path.write_text(ldif)
    proc = subprocess.run(
        [slapadd, "-n", database, "-F", str(root / "config"), "-l", str(path)], capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"slapadd -n{database} failed: {proc.stderr.decode(errors='replace').strip()}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _start(slapd: str, root: Path, port: int) -> subprocess.Popen[bytes]:
    """slapd in the foreground (`-d 0`), listening on loopback only; returns once the port accepts connections."""
    log = (root / "slapd.log").open("wb")
    proc = subprocess.Popen(
        [slapd, "-d", "0", "-h", f"ldap://127.0.0.1:{port}/", "-F", str(root / "config")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"slapd exited ({proc.returncode}):\n{(root / 'slapd.log').read_text(errors='replace')}")
        if _answers(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(f"slapd did not listen within {START_TIMEOUT_S:.0f}s")


@contextmanager
def start_slapd(root: Path) -> Iterator[Slapd]:
    """A fresh slapd with config and data under `root` (created if missing); stopped when the block ends."""
    slapd, slapadd = _require_tools()
    for folder in ("config", "data"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    _slapadd(slapadd, root, "0", config_ldif(root))
    _slapadd(slapadd, root, "1", data_ldif())
    port = free_port()
    server = Slapd(root=root, port=port, process=_start(slapd, root, port))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slapd() -> Iterator[Slapd]:
    """A running slapd with `USERS` and `GROUPS` loaded, for one test module."""
    root = Path(tempfile.mkdtemp(prefix="kb-slapd-"))
    try:
        with start_slapd(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)
