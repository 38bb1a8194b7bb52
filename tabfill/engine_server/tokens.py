"""Tenants and their tokens: a file of `name = scrypt$N$r$p$salt$hash [concurrent=K] [rpm=R]` lines.

The file never holds a token, only its scrypt hash (hashlib, salt and cost parameters in the line). A token
is `NAME.SECRET`: the name picks the line, so one hello costs one scrypt (~50-80 ms, run off the event loop);
an unknown name still pays for one so that timing does not tell names apart. Comparison is constant-time.
A token that passed once is remembered by its HMAC under a key of this process (never the token, never
written anywhere), next to the line it matched: its later hellos (an editor started again, a reconnect)
cost no scrypt, and a wrong secret still costs one since it cannot match. A changed line (the token
replaced) or a removed one forgets it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DUMMY_SALT = b"tabfill-no-such-tenant"


class TokenFileError(ValueError):
    pass


@dataclass(frozen=True)
class Tenant:
    name: str
    hash_line: str  # scrypt$N$r$p$salt$hash
    concurrent: int = 0  # 0: no limit on generations at once
    rpm: int = 0  # 0: no limit on generate requests per minute


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 2**20, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def check_secret(secret: str, hash_line: str) -> bool:
    try:
        kind, n, r, p, salt, digest = hash_line.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=256 * 2**20, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def parse_line(line: str, number: int = 0) -> Tenant | None:
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    name, sep, rest = text.partition("=")
    name = name.strip()
    parts = rest.split()
    if not sep or not _NAME.match(name) or not parts or not parts[0].startswith("scrypt$"):
        raise TokenFileError(f"line {number}: expected `name = scrypt$...` (a name of letters, digits, _ or -)")
    limits = {"concurrent": 0, "rpm": 0}
    for option in parts[1:]:
        key, _, value = option.partition("=")
        if key not in limits or not value.isdigit():
            raise TokenFileError(f"line {number}: unknown option {option!r} (concurrent=N, rpm=N)")
        limits[key] = int(value)
    return Tenant(name, parts[0], limits["concurrent"], limits["rpm"])


def format_line(tenant: Tenant) -> str:
    options = "".join(f" {key}={value}" for key, value in (("concurrent", tenant.concurrent), ("rpm", tenant.rpm)) if value)
    return f"{tenant.name} = {tenant.hash_line}{options}"


def read_tenants(path: Path) -> dict[str, Tenant]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    tenants: dict[str, Tenant] = {}
    for number, line in enumerate(text.splitlines(), 1):
        tenant = parse_line(line, number)
        if tenant is not None:
            if tenant.name in tenants:
                raise TokenFileError(f"line {number}: tenant {tenant.name!r} appears twice")
            tenants[tenant.name] = tenant
    return tenants


def add_tenant(path: Path, name: str, concurrent: int = 0, rpm: int = 0) -> str:
    """Create (or replace) tenant `name` with a new random token; returns the token (shown once)."""
    if not _NAME.match(name):
        raise TokenFileError(f"tenant name {name!r}: use 1-64 letters, digits, _ or -")
    secret = secrets.token_urlsafe(32)
    tenants = read_tenants(path)
    tenants[name] = Tenant(name, hash_secret(secret), concurrent, rpm)
    body = "# tabfill engine tokens: name = scrypt hash of the token (never the token itself)\n"
    body += "".join(format_line(tenant) + "\n" for tenant in tenants.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)
    os.replace(staging, path)
    return f"{name}.{secret}"


@functools.cache
def _dummy_line() -> str:
    return hash_secret("", _DUMMY_SALT)


class TokenStore:
    """The tenants of a token file, re-read when the file changes (adding a token needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._tenants: dict[str, Tenant] = {}
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}  # name -> (its line, HMAC of the secret that passed)
        self.reload()

    def reload(self) -> None:
        try:
            status = self.path.stat()
            stamp = (status.st_mtime, status.st_size)
        except FileNotFoundError:
            stamp = (0.0, -1)
        if stamp != self._stamp:
            self._tenants, self._stamp = read_tenants(self.path), stamp

    def __len__(self) -> int:
        return len(self._tenants)

    def authenticate(self, token: str) -> Tenant | None:
        """The tenant whose token this is, or None. Blocking (one scrypt): call it off the event loop."""
        try:
            self.reload()
        except (OSError, TokenFileError):
            pass  # keep the tenants read before; a half-written file must not lock everyone out
        name, _, secret = token.partition(".")
        tenant = self._tenants.get(name)
        if tenant is None:
            check_secret(secret, _dummy_line())
            return None
        mac = hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        known = self._verified.get(name)
        if known is not None and known[0] == tenant.hash_line and hmac.compare_digest(known[1], mac):
            return tenant
        if not check_secret(secret, tenant.hash_line):
            return None
        self._verified[name] = (tenant.hash_line, mac)
        return tenant
