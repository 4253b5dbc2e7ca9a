"""User-name validation and the escaping of values put into LDAP filters and DNs."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import ldap_escape_to_bytes
from ldap3.utils.dn import parse_dn

from auth.directory import (
    DEFAULT_USERNAME_PATTERN,
    MAX_USERNAME_LENGTH,
    DirectoryConfigError,
    ServerSpec,
    dn_value,
    filter_value,
    normalize_dn,
    valid_username,
)

DEFAULT = re.compile(DEFAULT_USERNAME_PATTERN)
PERMISSIVE = re.compile(r".+", re.DOTALL)
SPECIALS = set("*()\\\x00,+=\"<>;# /\n\r\t")


@pytest.mark.parametrize("name", ["alice", "bob", "j.smith", "_svc", "a-b_c.d", "a" * 32])
def test_posix_names_are_valid(name: str) -> None:
    assert valid_username(name, DEFAULT)


@pytest.mark.parametrize("name", [
    "", "*", "a*", ")(uid=*", "alice)(uid=*", "\x00", "alice\x00", "alice,ou=people", "a+b", "a=b",
    "a\\", "uid=alice", "alice\n", "alice ", " alice", "Alice", "1alice", "-alice", "a" * 33, "a" * 10_000,
    "älice", "al/ice", "..", ".",
])
def test_anything_else_is_refused_by_default(name: str) -> None:
    assert not valid_username(name, DEFAULT)


def test_control_characters_and_huge_names_are_refused_whatever_the_pattern() -> None:
    assert valid_username("a,b=c*", PERMISSIVE)
    for name in ("alice\n", "a\x00", "a\x1fb", "a\x7f", "x" * (MAX_USERNAME_LENGTH + 1)):
        assert not valid_username(name, PERMISSIVE)


@settings(max_examples=500)
@given(st.text(max_size=80))
@example("alice\n")
@example("alice)(uid=*")
def test_property_a_valid_default_name_is_plain_posix(name: str) -> None:
    if valid_username(name, DEFAULT):
        assert 1 <= len(name) <= 32
        assert not SPECIALS & set(name)
        assert name == name.strip() and name.isascii() and name == name.lower()
        # nothing to escape: the value reaches the directory as typed
        assert filter_value(name) == name and dn_value(name) == name


def _filter_bytes(value: str) -> bytes:
    """What ldap3 sends for `(uid=<escaped value>)`: one equality assertion, or the test fails."""
    root = parse_filter(f"(uid={filter_value(value)})", None, True, True, None, True)
    assert len(root.elements) == 1
    node = root.elements[0]
    assert node.assertion["attr"] == "uid" and not node.elements
    return ldap_escape_to_bytes(node.assertion["value"])


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=60))
@example("*")
@example("a*")
@example(")(uid=*")
@example("*)(|(uid=*")
@example("\\2a")
@example("\x00")
def test_property_filter_escaping_keeps_one_equality_assertion(value: str) -> None:
    escaped = filter_value(value)
    # No unescaped metacharacter survives: a value can never add a wildcard or a clause.
    assert not re.search(r"[*()\x00]", escaped)
    assert re.fullmatch(r"(?:[^\\]|\\[0-9a-f]{2})*", escaped, re.DOTALL)
    sent = _filter_bytes(value)
    if value == value.strip():  # ldap3 strips surrounding spaces from assertion values
        assert sent == value.encode()


def _unescape_dn_value(text: str) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            pair = text[i + 1:i + 3]
            if re.fullmatch(r"[0-9a-fA-F]{2}", pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out += text[i + 1].encode()
            i += 2
            continue
        out += text[i].encode()
        i += 1
    return out.decode()


@settings(max_examples=500)
@given(st.text(min_size=1, max_size=60))
@example(",")
@example("+")
@example("=")
@example("\\")
@example("a,ou=admins")
@example("#x")
@example(" x ")
@example("\x00")
def test_property_dn_escaping_keeps_the_dn_shape(value: str) -> None:
    dn = f"uid={dn_value(value)},ou=people,dc=example,dc=org"
    parts = parse_dn(dn, escape=False, strip=False)
    assert [p[0] for p in parts] == ["uid", "ou", "dc", "dc"]
    assert _unescape_dn_value(parts[0][1]) == value


def test_dn_value_refuses_empty() -> None:
    with pytest.raises(ValueError):
        dn_value("")


def test_normalize_dn_ignores_case_and_spacing() -> None:
    assert normalize_dn("CN=Hub-Admins, ou=Names,dc=example,DC=org") == normalize_dn(
        "cn=hub-admins,ou=names,dc=example,dc=org")


@pytest.mark.parametrize("url, host, port, ldaps", [
    ("ldap://ldap1.example.org", "ldap1.example.org", 389, False),
    ("ldaps://ldap1.example.org", "ldap1.example.org", 636, True),
    ("ldap://127.0.0.1:10389/", "127.0.0.1", 10389, False),
    ("ldaps://[::1]:1636", "::1", 1636, True),
])
def test_server_urls(url: str, host: str, port: int, ldaps: bool) -> None:
    spec = ServerSpec.parse(url)
    assert (spec.host, spec.port, spec.ldaps) == (host, port, ldaps)


@pytest.mark.parametrize("url", ["ldap1.example.org", "http://x", "ldap://", "ldap://x/dc=example",
                                 "ldap://x:99999"])
def test_bad_server_urls_say_how_to_write_them(url: str) -> None:
    with pytest.raises(DirectoryConfigError, match="ldap"):
        ServerSpec.parse(url)
