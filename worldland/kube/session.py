"""The session under every Kubernetes operation: building the client, one API call, errors, redaction.

Written against the official ``kubernetes`` client only (``CoreV1Api``; ``AppsV1Api`` in
``daemonsets``). Everything else in ``worldland/`` that needs the cluster goes through
``worldland.kube.KubeClient``; nothing outside ``worldland/kube/`` imports ``kubernetes``.

Holds ``KubeSession`` (construction from a kubeconfig, in-cluster or ``connect()``; ``close`` and
the context manager; ``_call``, ``_list``, ``_error``, ``_redact`` and the credentials they
scrub), the errors (``KubeError`` and its subclasses) and the token patterns redaction uses.

Rules kept here:

- Every failure surfaces as ``KubeError`` (``KubeUnavailable`` when the API cannot be reached or
  answers 5xx/429, ``KubeNotFound``, ``KubeConflict``), with a message built from the status code
  and the API's own ``Status.message``, scrubbed of credentials, and with no chained client
  exception (whose text carries headers and bodies).
- A bootstrap token's secret half never appears in an exception message: error text is scrubbed
  of the client's credentials, the secrets of the call at hand, and anything token-shaped.

May import ``worldland.protocol`` and ``worldland.domain`` only, of the project.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from worldland.domain.join import IN_CLUSTER

__all__ = [
    "CONFLICT_RETRIES",
    "DEFAULT_TIMEOUT",
    "KUBECONFIG_ENV",
    "LIST_PAGE_SIZE",
    "TOKEN_RE",
    "TOKEN_SECRET_RE",
    "KubeConflict",
    "KubeError",
    "KubeNotFound",
    "KubeSession",
    "KubeUnavailable",
]

# -- constants -------------------------------------------------------------------------------------------

KUBECONFIG_ENV = "WORLDLAND_KUBECONFIG"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

DEFAULT_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds per request
CONFLICT_RETRIES = 5
LIST_PAGE_SIZE = 500

TOKEN_RE = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
# A token's secret half on its own: any standalone 16-character [a-z0-9] word. Scrubbed from error
# text too; the price is that such a word in an object name or message reads <redacted> there.
TOKEN_SECRET_RE = re.compile(r"(?<![A-Za-z0-9])[a-z0-9]{16}(?![A-Za-z0-9])")


# -- errors ------------------------------------------------------------------------------------------------


class KubeError(Exception):
    """A Kubernetes API call failed. ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeUnavailable(KubeError):
    """The API could not be reached, timed out, or answered 5xx/429: worth retrying later."""


class KubeNotFound(KubeError):
    """The object does not exist (404)."""


class KubeConflict(KubeError):
    """409 that retries did not resolve (an object changed under us too often, or a name is taken)."""


# -- the session -------------------------------------------------------------------------------------------


class TokenFile:
    """A service account token file, read again when it changes (its inode, size or modification time:
    the kubelet replaces it through a symlink swap). ``refresh`` is the client's ``refresh_api_key_hook``,
    called before each request: one ``stat``. A file that cannot be read keeps the token last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._lock = threading.Lock()

    def refresh(self, configuration: k8s.Configuration) -> None:
        try:
            st = self.path.stat()
            seen = (st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                if seen == self._seen:
                    return
                token = self.path.read_text(encoding="utf-8").strip()
                if token:
                    configuration.api_key["BearerToken"] = f"bearer {token}"
                    self._seen = seen
        except (OSError, UnicodeDecodeError):  # the kubelet mid-swap, or not a token: keep the last one
            return


class KubeSession:
    """One ``kubernetes.client.ApiClient`` and the plumbing every operation shares. Thread-safe.

    ``writes`` and ``reads`` count the requests this session sent, by ``"VERB resource"``.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        conflict_retries: int = CONFLICT_RETRIES,
    ) -> None:
        self._api_client = api_client
        self._core = k8s.CoreV1Api(api_client)
        self._timeout = timeout
        self._clock = clock
        self._conflict_retries = conflict_retries
        self._lock = threading.Lock()
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str], *, context: str | None = None, **kwargs: Any
    ) -> Self:
        try:
            api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]  # kubernetes' config loader is unannotated
                config_file=str(path), context=context, persist_config=False
            )
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise KubeError(f"cannot load kubeconfig {str(path)!r}: {type(exc).__name__}") from None
        return cls(api_client, **kwargs)

    @classmethod
    def in_cluster(
        cls,
        *,
        account_dir: Path = SERVICE_ACCOUNT_DIR,
        environ: Mapping[str, str] = os.environ,
        **kwargs: Any,
    ) -> Self:
        """The pod's service account: ``account_dir``'s ``token`` and ``ca.crt``, the API at
        ``KUBERNETES_SERVICE_HOST``/``_PORT``. The token file is read again whenever it changes: the
        kubelet rotates it (a projected token lasts an hour), and a long-running listener must follow."""
        configuration = k8s.Configuration()
        token_file = account_dir / "token"
        loader = k8s_config.incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]  # kubernetes' config loader is unannotated
            token_filename=str(token_file),
            cert_filename=str(account_dir / "ca.crt"),
            try_refresh_token=False,
            environ=environ,
        )
        try:
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]  # unannotated, as above
        except (ConfigException, OSError) as exc:
            raise KubeError(f"not running in a cluster: {exc}") from None
        configuration.refresh_api_key_hook = TokenFile(token_file).refresh  # type: ignore[assignment]  # the client initialises its hook to None, unannotated
        return cls(k8s.ApiClient(configuration), **kwargs)

    @classmethod
    def open(cls, kubeconfig: str | os.PathLike[str], **kwargs: Any) -> Self:
        """A kubeconfig file, or ``IN_CLUSTER``: the pod's service account."""
        if str(kubeconfig) == IN_CLUSTER:
            return cls.in_cluster(**kwargs)
        return cls.from_kubeconfig(kubeconfig, **kwargs)

    @classmethod
    def connect(cls, kubeconfig: str | os.PathLike[str] | None = None, **kwargs: Any) -> Self:
        """Explicit kubeconfig, else ``$WORLDLAND_KUBECONFIG``, ``$KUBECONFIG`` (first entry),
        ``~/.kube/config`` when present, else the in-cluster service account."""
        candidates = [kubeconfig, os.environ.get(KUBECONFIG_ENV)]
        kube_env = os.environ.get("KUBECONFIG")
        if kube_env:
            candidates.append(kube_env.split(os.pathsep)[0])
        for candidate in candidates:
            if candidate:
                return cls.from_kubeconfig(candidate, **kwargs)
        default = Path.home() / ".kube" / "config"
        if default.is_file():
            return cls.from_kubeconfig(default, **kwargs)
        return cls.in_cluster(**kwargs)

    def close(self) -> None:
        self._api_client.close()  # type: ignore[no-untyped-call]  # ApiClient.close has no annotations

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._api_client.configuration.host!r})"

    @property
    def host(self) -> str:
        host: str = self._api_client.configuration.host
        return host

    # -- request plumbing --------------------------------------------------------------------------------

    def _credentials(self) -> list[str]:
        found: list[str] = []
        configuration = self._api_client.configuration
        for value in (configuration.api_key or {}).values():
            if isinstance(value, str) and value:
                found.append(value)
                scheme, _, rest = value.partition(" ")
                if rest and scheme.lower() == "bearer":
                    found.append(rest)
        for attr in ("password", "access_token"):
            value = getattr(configuration, attr, None)
            if isinstance(value, str) and value:
                found.append(value)
        return found

    def _redact(self, text: str, extra: Iterable[str] = ()) -> str:
        for secret in sorted({*self._credentials(), *extra}, key=len, reverse=True):
            if len(secret) >= 6:
                text = text.replace(secret, "<redacted>")
        text = TOKEN_RE.sub("<redacted-token>", text)
        text = TOKEN_SECRET_RE.sub("<redacted>", text)
        return re.sub(r"(?i)(bearer|basic)\s+\S+", r"\1 <redacted>", text)

    def _error(self, action: str, exc: BaseException, secrets_in_play: Iterable[str]) -> KubeError:
        if isinstance(exc, ApiException):
            status = exc.status
            message = ""
            reason = exc.reason
            try:
                body = json.loads(exc.body or "")
                if isinstance(body, dict):
                    message = str(body.get("message") or "")
                    reason = body.get("reason") or reason
            except (ValueError, TypeError):
                pass
            text = f"{action}: HTTP {status} {reason or ''}".rstrip()
            if message:
                text += f": {message[:500]}"
            text = self._redact(text, secrets_in_play)
            if status == 404:
                return KubeNotFound(text, status=status, reason=reason)
            if status == 409:
                return KubeConflict(text, status=status, reason=reason)
            if status is None or status == 0 or status == 429 or status >= 500:
                return KubeUnavailable(text, status=status, reason=reason)
            return KubeError(text, status=status, reason=reason)
        detail = type(exc).__name__
        reason_obj = getattr(exc, "reason", None)
        if reason_obj is not None:
            detail += f" ({type(reason_obj).__name__}: {str(reason_obj)[:200]})"
        elif str(exc):
            detail += f" ({str(exc)[:200]})"
        text = self._redact(f"{action}: Kubernetes API unreachable at {self.host}: {detail}", secrets_in_play)
        return KubeUnavailable(text)

    def _call(
        self,
        action: str,
        verb: str,
        resource: str,
        method: Callable[..., Any],
        *args: Any,
        secrets_in_play: Iterable[str] = (),
        **kwargs: Any,
    ) -> Any:
        """Run one API call, return its JSON body; errors become ``KubeError`` with no chained cause."""
        error: KubeError | None = None
        with self._lock:
            (self.writes if verb in ("create", "patch", "update", "delete") else self.reads)[
                f"{verb} {resource}"
            ] += 1
        try:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = self._error(action, exc, secrets_in_play)
        else:
            try:
                return json.loads(data) if data else None
            except ValueError:
                error = KubeError(f"{action}: the API answered with something that is not JSON")
        # Raised outside the except block: no __context__ holding the client's exception text.
        raise error

    # -- listing ---------------------------------------------------------------------------------------------

    def _list(
        self, action: str, resource: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        token: str | None = None
        restarted = False
        while True:
            try:
                page = self._call(
                    action, "list", resource, method, *args, limit=LIST_PAGE_SIZE, _continue=token, **kwargs
                )
            except KubeError as exc:
                if exc.status == 410 and not restarted:  # continue token expired: start over once
                    token, restarted = None, True
                    continue
                raise
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
