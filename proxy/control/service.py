"""The management API's requests, from HTTP to a configuration generation in force and back.

One source of truth: the store is rebuilt from the configuration in force whenever that changed by other means
(a file edit), and an API change becomes a generation through ``Runtime.reload`` like a file edit does
(validated, swapped atomically, last good kept, logged with its generation, counted in
``nsp_config_reloads_total``). The state file is written to a temporary file first and renamed over the state
file only once the generation is in force, so the file always holds a configuration that was in force. A PUT or
DELETE is answered after that; long-running operations (where Azure has them) answer with an operation-status
resource that is already ``Succeeded``. Changes are serialised by one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import json
import logging
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from proxy.config.errors import ConfigError, Problem
from proxy.config.files import parse_text, read_text
from proxy.control import candidate, export
from proxy.control.resources import (
    KINDS,
    OPERATION_STATUSES,
    PERIMETER_TYPE,
    PERIMETERS,
    PROVIDER,
    ArmError,
    OperationTarget,
    Target,
    check_api_version,
    parse_path,
)
from proxy.control.store import Store, page
from proxy.runtime import Runtime

log = logging.getLogger("nsp-proxy")
requests_log = logging.getLogger("nsp-proxy.management")  # one line per request: shown with `run --verbose` only

MAX_BODY = 1 << 20  # bytes of a request body (ARM's own limit is larger; NSP bodies are small)
MAX_OPERATIONS = 1000  # operation-status resources kept (oldest out first)


@dataclass
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def state_path(config_path: str | None, configured: str | None) -> Path:
    """``settings.management.stateFile``, else the config file's name with ``.state.yaml``."""
    if configured:
        return Path(configured).absolute()
    base = Path(config_path or "nsp-proxy.yaml").absolute()
    stem = base.name.removesuffix(".yaml").removesuffix(".yml").removesuffix(".json").removesuffix(".state")
    return base.with_name(f"{stem}.state.yaml")


class ControlPlane:
    def __init__(self, runtime: Runtime, apply_listeners: Callable[[], None]):
        self.runtime = runtime
        self.apply_listeners = apply_listeners
        settings = runtime.policy.config.settings
        self.token = settings.management_token
        self.state_file = state_path(runtime.config_path, settings.management_state_file)
        self.lock = asyncio.Lock()
        self.operations: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.store = Store()
        self.generation = 0
        self.raw_settings: dict[str, Any] = {}
        self.bindings: dict[str, dict[str, Any]] = {}
        self.unbound: set[str] = set()  # lower-cased resource IDs of associations without a binding (warned)
        self.sync()

    # -- the configuration in force ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Rebuild the store from the configuration in force if it changed by other means than this API."""
        policy = self.runtime.policy
        if policy.generation == self.generation:
            return
        config = policy.config
        old = self.store
        self.store = Store.from_resources(export.rest_resources(config))
        raw = _raw_document(config.source)
        for key, version in {**_versions(raw), **old.versions}.items():  # counting goes on across reloads/restarts
            if key in self.store.versions:
                self.store.versions[key] = max(version, self.store.versions[key])
        settings = raw.get("settings")
        self.raw_settings = dict(settings) if isinstance(settings, dict) else {}
        management = dict(self.raw_settings.get("management") or {})
        merged = {str(k).lower(): (str(k), v) for k, v in (management.get("bindings") or {}).items()}
        merged.update({k.lower(): (k, v) for k, v in export.bindings(config).items()})
        self.bindings = {original: local for original, local in merged.values()}
        management.update(bindings=self.bindings, stateFile=str(self.state_file))
        self.raw_settings = {**self.raw_settings, "management": management}
        self.generation = policy.generation

    def bound(self, resource_id: str) -> bool:
        return any(k.lower() == resource_id.lower() for k in self.bindings)

    async def _commit(self, changed: Store) -> None:
        """Put ``changed`` in force (and in the state file); ArmError 400 with the reason if it is refused."""
        refused: list[ArmError] = []
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")

        def load() -> Any:
            try:
                made = candidate.build(changed, self.raw_settings, str(self.state_file))
            except ArmError as exc:
                refused.append(exc)
                raise ConfigError(str(self.state_file), [Problem("", exc.message)]) from None
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(made.text, encoding="utf-8")
            return made.config

        ok = await self.runtime.reload(self.apply_listeners, load=load)
        if not ok:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if refused:
                raise refused[0]
            raise ArmError(400, "InvalidRequestFormat", f"The change was refused: {self.runtime.last_refusal}")
        os.replace(tmp, self.state_file)
        self.runtime.adopt(str(self.state_file))
        self.store, self.generation = changed, self.runtime.policy.generation
        unbound = {a.resource_id.lower(): a for a in self.runtime.policy.config.associations()
                   if not self.bound(a.resource_id)}
        for key in unbound.keys() - self.unbound:  # said once per association, not at every change
            log.warning("management: association %r: resource %s has no binding in settings.management.bindings:"
                        " stored and reported (hasProvisioningIssues: yes), no listener until it has one",
                        unbound[key].name, unbound[key].resource_id)
        self.unbound = set(unbound)

    # -- requests ---------------------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            response = await self._handle(request)
        except ArmError as exc:
            response = Response(exc.status, exc.body())
        except Exception as exc:  # noqa: BLE001 - a bug: ARM's 500, the proxy and the endpoint keep running
            log.error("management: internal error: %s: %s", type(exc).__name__, str(exc)[:300])
            response = Response(500, ArmError(500, "InternalServerError", "nsp-proxy failed to process the "
                                                                          "request; see its log.").body())
        response.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        response.headers.setdefault("x-ms-correlation-request-id",
                                    request.headers.get("x-ms-correlation-request-id", str(uuid.uuid4())))
        requests_log.info("management: %s %s -> %d", request.method, request.target[:200], response.status)
        return response

    async def _handle(self, request: Request) -> Response:
        self._authorize(request.headers.get("authorization", ""))
        parts = urlsplit(request.target)
        query = {k.lower(): v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        target = parse_path(parts.path)
        rtype = PERIMETER_TYPE if isinstance(target, OperationTarget) else target.type
        api_version = check_api_version(query.get("api-version"), rtype)
        base = f"https://{request.headers.get('host', 'localhost')}"
        if isinstance(target, OperationTarget):
            return self._operation(target, request.method)
        async with self.lock:
            self.sync()
            if request.method == "GET":
                return self._get(target, api_version, query, base, parts.path)
            if request.method in ("PUT", "PATCH") and not target.is_collection:
                return await self._put(target, request, api_version, base)
            if request.method == "DELETE" and not target.is_collection:
                return await self._delete(target, api_version, base)
        raise ArmError(405, "MethodNotAllowed", f"The requested resource does not support http method "
                                                f"'{request.method[:20]}'.")

    def _authorize(self, header: str) -> None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ArmError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                                                        "missing or is not a bearer token.")
        if self.token is not None and not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")

    def _get(self, target: Target, api_version: str, query: dict[str, str], base: str, path: str) -> Response:
        render = lambda r: self.store.render(r, api_version, self.bound)  # noqa: E731
        if not target.is_collection:
            return Response(200, render(self.store.get(target)))
        items, next_link = page(self.store.members(target), query.get("$top"), query.get("$skiptoken"),
                                f"{base}{path}?api-version={api_version}")
        body: dict[str, Any] = {"value": [render(r) for r in items]}
        if next_link:
            body["nextLink"] = next_link
        return Response(200, body)

    async def _put(self, target: Target, request: Request, api_version: str, base: str) -> Response:
        body = _json_body(request.body)
        if request.method == "PATCH":  # perimeters only (tags): the resource as it is, with the patch applied
            if target.kind != PERIMETERS:
                raise ArmError(405, "MethodNotAllowed", "PATCH is supported on perimeters only.")
            current = self.store.get(target)
            body = {**current, "tags": body.get("tags", current.get("tags")) if isinstance(body, dict) else None}
        changed, resource, created = self.store.put(target, body)
        await self._commit(changed)
        headers = self._lro(target, api_version, base) if KINDS[target.kind.lower()].lro_put else {}
        status = 201 if created and request.method == "PUT" else 200
        return Response(status, self.store.render(resource, api_version, self.bound), headers)

    async def _delete(self, target: Target, api_version: str, base: str) -> Response:
        changed = self.store.delete(target)
        if changed is None:
            return Response(204)
        await self._commit(changed)
        if KINDS[target.kind.lower()].lro_delete:
            return Response(202, None, self._lro(target, api_version, base))
        return Response(200)

    # -- long-running operations ------------------------------------------------------------------------------

    def _lro(self, target: Target, api_version: str, base: str) -> dict[str, str]:
        """An operation-status resource that already says Succeeded (the change is in force) and its headers."""
        perimeter = self.store.resources.get(target.id_of(0).lower()) or {}
        location = str(perimeter.get("location") or "global").replace(" ", "").lower()
        op_id = str(uuid.uuid4())
        path = (f"/subscriptions/{target.subscription}/providers/{PROVIDER}/locations/{location}/"
                f"{OPERATION_STATUSES}/{op_id}")
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        self.operations[op_id] = {"id": path, "name": op_id, "status": "Succeeded", "startTime": now,
                                  "endTime": now, "percentComplete": 100, "resourceId": target.resource_id}
        while len(self.operations) > MAX_OPERATIONS:
            self.operations.popitem(last=False)
        url = f"{base}{path}?api-version={api_version}"
        return {"Azure-AsyncOperation": url, "Location": url, "Retry-After": "1"}

    def _operation(self, target: OperationTarget, method: str) -> Response:
        if method != "GET":
            raise ArmError(405, "MethodNotAllowed", f"The requested resource does not support http method "
                                                    f"'{method[:20]}'.")
        operation = self.operations.get(target.operation_id)
        if operation is None or operation["id"].split("/")[2].lower() != target.subscription.lower():
            raise ArmError(404, "ResourceNotFound", f"The operation '{target.operation_id[:80]}' was not found.")
        return Response(200, operation)


def _json_body(body: bytes) -> Any:
    if len(body) > MAX_BODY:
        raise ArmError(413, "RequestEntityTooLarge", f"The request content is larger than {MAX_BODY} bytes.")
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArmError(400, "InvalidRequestFormat", f"The request content is not valid JSON: {exc}") from None


def _raw_document(source: str) -> dict[str, Any]:
    """The configuration file ``source`` as written (its ``settings`` carry on into the state file)."""
    try:
        document = parse_text(read_text(Path(source)), source)
    except (ConfigError, OSError):
        return {}
    return document if isinstance(document, dict) else {}


def _versions(document: dict[str, Any]) -> dict[str, int]:
    """Profile ID (lower case) -> the accessRulesVersion a state file recorded."""
    out: dict[str, int] = {}
    for perimeter in document.get("perimeters") or []:
        if not isinstance(perimeter, dict) or not isinstance(perimeter.get("id"), str):
            continue
        for profile in perimeter.get("profiles") or []:
            version = str(profile.get("accessRulesVersion", "")) if isinstance(profile, dict) else ""
            if version.isdigit():
                out[f"{perimeter['id']}/profiles/{profile.get('name')}".lower()] = int(version)
    return out
