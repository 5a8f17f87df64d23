"""Bootstrap (join) tokens: ``BootstrapToken``, ``new_bootstrap_token`` and ``BootstrapTokens``.

Rules kept here:

- Bootstrap tokens are ``kube-system/bootstrap-token-<id>`` Secrets exactly as kubeadm makes
  them, with a short expiry (15 to 60 minutes, default 30). The secret half never appears in a
  repr, a log line or an exception message (the session scrubs error text; see
  ``worldland.kube.session``).
- ``provider_id`` (hostile text) only becomes a label value through ``label_value``.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worldland.domain.join import DEFAULT_TOKEN_TTL_S, MAX_TOKEN_TTL_S, MIN_TOKEN_TTL_S
from worldland.domain.names import LABEL_PROVIDER_ID, label_value
from worldland.kube.nodes import label_selector
from worldland.kube.session import KubeConflict, KubeError, KubeNotFound, KubeSession

__all__ = [
    "DEFAULT_TOKEN_TTL_S",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "MAX_TOKEN_TTL_S",
    "MIN_TOKEN_TTL_S",
    "NODE_TOKEN_GROUP",
    "TOKEN_ID_ATTEMPTS",
    "TOKEN_NAMESPACE",
    "TOKEN_SECRET_PREFIX",
    "TOKEN_SECRET_TYPE",
    "BootstrapToken",
    "BootstrapTokenInfo",
    "BootstrapTokens",
    "new_bootstrap_token",
    "parse_rfc3339",
    "rfc3339",
]

# -- constants -------------------------------------------------------------------------------------------

TOKEN_NAMESPACE = "kube-system"  # noqa: S105 (a name, not a secret)
TOKEN_SECRET_PREFIX = "bootstrap-token-"  # noqa: S105 (a name, not a secret)
TOKEN_SECRET_TYPE = "bootstrap.kubernetes.io/token"  # noqa: S105 (a name, not a secret)
NODE_TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"  # noqa: S105 (a name, not a secret)
TOKEN_ID_ATTEMPTS = 5
_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # noqa: S105 (kubeadm's alphabet: [a-z0-9])

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "worldland"


# -- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapToken:
    """A join token. ``repr``/``str`` show the id and expiry only; ``token`` is the full secret."""

    token_id: str
    secret: str = field(repr=False)
    expires_at: datetime

    @property
    def token(self) -> str:
        """``<id>.<secret>``, for ``kubeadm join --token``; keep it out of logs."""
        return f"{self.token_id}.{self.secret}"

    @property
    def secret_name(self) -> str:
        return TOKEN_SECRET_PREFIX + self.token_id

    def __str__(self) -> str:
        return f"bootstrap token {self.token_id} (expires {rfc3339(self.expires_at)})"


@dataclass(frozen=True)
class BootstrapTokenInfo:
    """A token as listed: never its secret."""

    token_id: str
    expires_at: datetime | None
    provider_label: str | None
    description: str


# -- pure helpers ----------------------------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def new_bootstrap_token() -> tuple[str, str]:
    """A fresh ``(token_id, token_secret)`` pair in kubeadm's form (``[a-z0-9]{6}``, ``[a-z0-9]{16}``)."""
    token_id = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(6))
    token_secret = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(16))
    return token_id, token_secret


# What create_bootstrap_token draws from. Tests replace it, as ``worldland.kube._new_token_id_secret``
# (the package forwards that assignment here).
_new_token_id_secret = new_bootstrap_token


# -- the operations --------------------------------------------------------------------------------------


class BootstrapTokens(KubeSession):
    """Create, read, list and delete join tokens (``kube-system`` Secrets of kubeadm's shape)."""

    def _token_body(
        self,
        token_id: str,
        token_secret: str,
        expires: datetime,
        description: str,
        provider_id: str | None,
        groups: list[str],
    ) -> dict[str, Any]:
        labels = {LABEL_MANAGED_BY: MANAGED_BY}
        if provider_id is not None:
            labels[LABEL_PROVIDER_ID] = label_value(provider_id)
        string_data = {
            "description": description,
            "token-id": token_id,
            "token-secret": token_secret,
            "expiration": rfc3339(expires),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
        }
        if groups:
            string_data["auth-extra-groups"] = ",".join(groups)
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": TOKEN_SECRET_PREFIX + token_id,
                "namespace": TOKEN_NAMESPACE,
                "labels": labels,
            },
            "type": TOKEN_SECRET_TYPE,
            "stringData": string_data,
        }

    @staticmethod
    def _token_args(
        token_id: str,
        token_secret: str,
        description: str | None,
        provider_id: str | None,
        extra_groups: Iterable[str],
    ) -> tuple[str, list[str]]:
        if not re.fullmatch(r"[a-z0-9]{6}", token_id) or not re.fullmatch(r"[a-z0-9]{16}", token_secret):
            raise ValueError("a bootstrap token is [a-z0-9]{6}.[a-z0-9]{16}")
        groups = list(extra_groups)
        for group in groups:
            if not group.startswith("system:bootstrappers:") or "," in group:
                raise ValueError(
                    f"bootstrap token groups must start with system:bootstrappers:, not {group!r}"
                )
        if description is None:
            description = "WorldLand join token"
            if provider_id is not None:
                description += f" for provider {label_value(provider_id)}"
        # Free text, but keep it one short printable line.
        description = "".join(ch if ch.isprintable() else " " for ch in description)[:200]
        return description, groups

    def _create_token_secret(self, body: dict[str, Any], token_secret: str) -> None:
        encoded = base64.b64encode(token_secret.encode()).decode()
        self._call(
            "create bootstrap token",
            "create",
            "secrets",
            self._core.create_namespaced_secret,
            TOKEN_NAMESPACE,
            body,
            secrets_in_play=(token_secret, encoded),
        )

    def create_bootstrap_token(
        self,
        *,
        ttl_seconds: int = DEFAULT_TOKEN_TTL_S,
        description: str | None = None,
        provider_id: str | None = None,
        extra_groups: Iterable[str] = (NODE_TOKEN_GROUP,),
    ) -> BootstrapToken:
        """Create a ``kubeadm join`` token valid for ``ttl_seconds`` (900 to 3600).

        ``provider_id`` (hostile text) only becomes a label value through ``label_value``
        (``worldland.domain.names``).
        A taken token id (409) is retried with a fresh one.
        """
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
            raise TypeError("ttl_seconds must be an int")
        if not MIN_TOKEN_TTL_S <= ttl_seconds <= MAX_TOKEN_TTL_S:
            raise ValueError(f"ttl_seconds must be {MIN_TOKEN_TTL_S} to {MAX_TOKEN_TTL_S}, not {ttl_seconds}")
        last: KubeError | None = None
        for _ in range(TOKEN_ID_ATTEMPTS):
            token_id, token_secret = _new_token_id_secret()
            text, groups = self._token_args(token_id, token_secret, description, provider_id, extra_groups)
            expires = datetime.fromtimestamp(int(self._clock()) + ttl_seconds, UTC)
            body = self._token_body(token_id, token_secret, expires, text, provider_id, groups)
            try:
                self._create_token_secret(body, token_secret)
            except KubeConflict as exc:
                last = exc  # the id is taken: try another
                continue
            return BootstrapToken(token_id, token_secret, expires)
        assert last is not None
        raise last

    def ensure_bootstrap_token(
        self,
        token_id: str,
        secret: str,
        expires_at: float,
        description: str | None = None,
        *,
        provider_id: str | None = None,
        extra_groups: Iterable[str] = (NODE_TOKEN_GROUP,),
    ) -> None:
        """Create the token ``token_id.secret`` expiring at ``expires_at`` (epoch seconds, at most an hour
        ahead), under an id the caller chose and recorded first. Idempotent: when the Secret exists
        with this very secret (a retry after a crash) nothing happens; another secret under the
        id raises ``KubeConflict``."""
        text, groups = self._token_args(token_id, secret, description, provider_id, extra_groups)
        ahead = expires_at - self._clock()
        if not 0 < ahead <= MAX_TOKEN_TTL_S + 60:
            raise ValueError(
                f"a join token expires within {MAX_TOKEN_TTL_S} s from now, not in {ahead:.0f} s"
            )
        expires = datetime.fromtimestamp(int(expires_at), UTC)
        body = self._token_body(token_id, secret, expires, text, provider_id, groups)
        try:
            self._create_token_secret(body, secret)
            return
        except KubeConflict:
            pass
        existing = self._token_data(token_id)
        if existing is not None and existing.get("token-secret") == secret:
            return  # created before (a retry): the same token
        raise KubeConflict(f"bootstrap token id {token_id} is taken by another token", status=409)

    def _token_data(self, token_id: str) -> dict[str, str] | None:
        """The decoded fields of a token's Secret, or None when there is no such token Secret."""
        if not re.fullmatch(r"[a-z0-9]{6}", token_id):
            raise ValueError(f"not a bootstrap token id: {token_id!r}")
        try:
            obj = self._call(
                "read bootstrap token",
                "get",
                "secrets",
                self._core.read_namespaced_secret,
                TOKEN_SECRET_PREFIX + token_id,
                TOKEN_NAMESPACE,
            )
        except KubeNotFound:
            return None
        if obj.get("type") != TOKEN_SECRET_TYPE:
            return None
        out: dict[str, str] = {}
        for key, value in (obj.get("data") or {}).items():
            try:
                out[key] = base64.b64decode(value).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
        return out

    def bootstrap_token_secret(self, token_id: str) -> str | None:
        """The secret half of token ``token_id`` while it exists and has not expired, else None."""
        data = self._token_data(token_id)
        if not data or data.get("token-id") != token_id:
            return None
        expiration = data.get("expiration")
        if expiration:
            try:
                if parse_rfc3339(expiration).timestamp() <= self._clock():
                    return None
            except ValueError:
                return None
        return data.get("token-secret") or None

    def delete_bootstrap_token(self, token_id: str) -> bool:
        """Delete a token's Secret; False when it was already gone."""
        if not re.fullmatch(r"[a-z0-9]{6}", token_id):
            raise ValueError(f"not a bootstrap token id: {token_id!r}")
        try:
            self._call(
                "delete bootstrap token",
                "delete",
                "secrets",
                self._core.delete_namespaced_secret,
                TOKEN_SECRET_PREFIX + token_id,
                TOKEN_NAMESPACE,
            )
        except KubeNotFound:
            return False
        return True

    def list_bootstrap_tokens(self, provider_id: str | None = None) -> list[BootstrapTokenInfo]:
        """Tokens this project created (optionally for one provider), without their secrets."""
        selector = {LABEL_MANAGED_BY: MANAGED_BY}
        if provider_id is not None:
            selector[LABEL_PROVIDER_ID] = label_value(provider_id)
        out: list[BootstrapTokenInfo] = []
        for item in self._list(
            "list bootstrap tokens",
            "secrets",
            self._core.list_namespaced_secret,
            TOKEN_NAMESPACE,
            label_selector=label_selector(selector),
            field_selector=f"type={TOKEN_SECRET_TYPE}",
        ):
            data = item.get("data") or {}

            def field_of(key: str, data: Mapping[str, str] = data) -> str:
                try:
                    return base64.b64decode(data.get(key, "")).decode("utf-8", "replace")
                except ValueError:
                    return ""

            expiration = field_of("expiration")
            try:
                expires = parse_rfc3339(expiration) if expiration else None
            except ValueError:
                expires = None
            out.append(
                BootstrapTokenInfo(
                    token_id=field_of("token-id"),
                    expires_at=expires,
                    provider_label=(item["metadata"].get("labels") or {}).get(LABEL_PROVIDER_ID),
                    description=field_of("description"),
                )
            )
        return out
