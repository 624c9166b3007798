"""Domain errors of ops services; kyc/api maps them to HTTP, the CLI to messages."""

from __future__ import annotations


class OpsError(Exception):
    """Base of the errors below."""


class AccountNotFound(OpsError):
    def __init__(self, account_id: str):
        super().__init__(f"account {account_id} not found")
        self.account_id = account_id


class ClusterNotFound(OpsError):
    def __init__(self, cluster_id: str):
        super().__init__(f"cluster {cluster_id} not found")
        self.cluster_id = cluster_id


class KeyNotFound(OpsError):
    def __init__(self, key_id: int):
        super().__init__(f"no API key {key_id}")
        self.key_id = key_id


class UnknownRole(OpsError):
    def __init__(self, role: str, roles: tuple[str, ...]):
        super().__init__(f"unknown role {role!r}: one of {', '.join(roles)}")
        self.role, self.roles = role, roles
