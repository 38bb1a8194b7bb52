"""Tenant tokens: the file holds scrypt hashes only; a token is checked in constant time."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tabfill.engine_server import tokens
from tabfill.engine_server.tokens import TokenFileError, TokenStore, add_tenant, read_tenants


def test_a_new_token_authenticates_its_tenant_and_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    alice = add_tenant(path, "alice", concurrent=2, rpm=30)
    bob = add_tenant(path, "bob")
    text = path.read_text()
    assert alice.split(".", 1)[1] not in text and bob.split(".", 1)[1] not in text
    assert "alice = scrypt$16384$8$1$" in text and "concurrent=2 rpm=30" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore(path)
    tenant = store.authenticate(alice)
    assert tenant is not None and (tenant.name, tenant.concurrent, tenant.rpm) == ("alice", 2, 30)
    assert store.authenticate(bob).name == "bob"  # type: ignore[union-attr]


@pytest.mark.parametrize("mangle", [lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), lambda t: "carol." + t.split(".", 1)[1],
                                    lambda t: "", lambda t: "alice", lambda t: t.replace("alice", "bob")])
def test_wrong_tokens_are_refused(tmp_path: Path, mangle) -> None:
    path = tmp_path / "tokens"
    token = add_tenant(path, "alice")
    add_tenant(path, "bob")
    assert TokenStore(path).authenticate(mangle(token)) is None


def test_adding_a_token_replaces_the_tenant_and_the_store_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    old = add_tenant(path, "alice")
    store = TokenStore(path)
    new = add_tenant(path, "alice")
    assert store.authenticate(old) is None
    assert store.authenticate(new) is not None
    assert list(read_tenants(path)) == ["alice"]


@pytest.mark.parametrize("line", ["alice = sha1$abc", "al ice = scrypt$1$1$1$a$b", "alice = scrypt$1$1$1$a$b speed=3"])
def test_a_bad_token_file_line_is_a_clear_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(line + "\n")
    with pytest.raises(TokenFileError, match="line 1"):
        read_tenants(path)


def test_a_token_that_passed_costs_no_scrypt_again_until_its_line_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens"
    alice = add_tenant(path, "alice")
    store = TokenStore(path)
    checks: list[str] = []
    real = tokens.check_secret
    monkeypatch.setattr(tokens, "check_secret", lambda secret, line: checks.append(secret) or real(secret, line))
    assert store.authenticate(alice).name == "alice"  # type: ignore[union-attr]
    assert store.authenticate(alice).name == "alice"  # type: ignore[union-attr]  # an editor started again
    assert len(checks) == 1
    wrong = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    assert store.authenticate(wrong) is None and len(checks) == 2  # a wrong secret still pays its scrypt
    assert alice.split(".", 1)[1] not in repr(vars(store))  # remembered by its HMAC, not in clear
    new = add_tenant(path, "alice")  # the token replaced: the one that passed before no longer does
    assert store.authenticate(alice) is None
    assert store.authenticate(new) is not None and store.authenticate(new) is not None
    assert len(checks) == 4  # the old token against the new line, the new token once
    path.write_text("")  # alice removed
    assert store.authenticate(new) is None
