"""hpcgate's LDAP authenticator and directory client pointed at the lab's slapd, as a site sets them."""

from __future__ import annotations

from typing import Any

import pytest
from tornado import web

from auth.authenticator import LDAPAuthenticator
from auth.directory import DirectoryClient, DirectorySettings, ServerSpec
from tests.helpers.lab import passwords

__all__ = ["client", "login", "make", "passwords", "refused", "site_config"]


def site_config(lab: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The authenticator configured as a real site would: search-then-bind, StartTLS, CA verified."""
    ldap = lab["ldap"]
    config: dict[str, Any] = {
        "server_urls": [ldap["uri"]],
        "tls_ca_file": ldap["ca_cert"],
        "service_dn": ldap["service_dn"],
        "service_password": passwords(lab)["svc-hpcgate"],
        "user_search_base": ldap["people_dn"],
        "group_search_base": ldap["groups_dn"],
        "allowed_groups": {"hpc-users"},
        "admin_groups": {"hub-admins"},
        "enable_auth_state": False,  # the hub's encryption of auth_state is not under test here
        "failed_logins_per_user": 0,
        "failed_logins_per_address": 0,
    }
    config.update(overrides)
    return config


def make(lab: dict[str, Any], **overrides: Any) -> LDAPAuthenticator:
    return LDAPAuthenticator(**site_config(lab, **overrides))


async def login(auth: LDAPAuthenticator, username: str, password: str) -> dict[str, Any]:
    """The hub's own path: authenticate, normalize, validate, check_allowed, is_admin."""
    model = await auth.get_authenticated_user(None, {"username": username, "password": password})
    assert model is not None
    return model


async def refused(auth: LDAPAuthenticator, username: str, password: str) -> web.HTTPError:
    with pytest.raises(web.HTTPError) as err:
        await auth.get_authenticated_user(None, {"username": username, "password": password})
    return err.value


def client(lab: dict[str, Any], url: str, **overrides: Any) -> DirectoryClient:
    ldap = lab["ldap"]
    settings: dict[str, Any] = {
        "servers": [ServerSpec.parse(url)], "user_search_base": ldap["people_dn"],
        "service_dn": ldap["service_dn"], "service_password": passwords(lab)["svc-hpcgate"],
        "tls_ca_file": ldap["ca_cert"], "group_search_base": ldap["groups_dn"], "receive_timeout": 2.0,
    }
    settings.update(overrides)
    return DirectoryClient(DirectorySettings(**settings))
