"""A local stand-in for the Hugging Face Hub, for tests: the endpoints ``huggingface_hub`` calls to create a
repo, upload files (small ones inline in the commit, large ones through the Git LFS batch API) and download
them back. Repos live in memory; every commit keeps a full snapshot of the files.

Point a client at it with ``HF_ENDPOINT=<handle.endpoint>`` (``huggingface_hub`` reads it once, at import:
set it in the environment of a subprocess) and ``HF_HUB_DISABLE_XET=1``: this server speaks LFS, not Xet,
and answers the Xet token endpoints with 501 saying so.

Routes (``{t}`` is ``model``/``dataset``/``space``, ``{p}`` the URL prefix: empty, ``datasets/``,
``spaces/``; ``{repo}`` is ``owner/name``; ``{rev}`` a branch (``main``) or a commit id):

* ``GET /api/whoami-v2``, ``GET /api/agent-harnesses``, ``POST /api/validate-yaml``
* ``POST /api/repos/create`` (409 when the repo exists)
* ``GET /api/{t}s/{repo}`` and ``GET /api/{t}s/{repo}/revision/{rev}`` (repo info with ``sha``,
  ``private``, ``siblings``)
* ``POST /api/{t}s/{repo}/preupload/{rev}`` (``uploadMode`` and the current ``oid`` of each path)
* ``POST /api/{t}s/{repo}/paths-info/{rev}`` (form ``paths``) and
  ``GET /api/{t}s/{repo}/tree/{rev}[/{path}]?recursive=`` (paginated with a ``Link`` header)
* ``POST /api/{t}s/{repo}/commit/{rev}``: an NDJSON body of ``header``, ``file`` (base64), ``lfsFile``,
  ``deletedFile`` and ``deletedFolder`` lines; ``parentCommit`` must be the head (412 otherwise)
* ``POST /{p}{repo}.git/info/lfs/objects/batch`` (basic transfer) with the upload (``PUT``) and verify
  (``POST``) URLs it hands out
* ``HEAD``/``GET /{p}{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size``, byte ranges)

A request whose ``Authorization`` header holds anything but ``Bearer <token>`` gets 401. Writes need the
token, and its user may write to its own namespace and its orgs only (403). Private repos are invisible (404)
without the token. ``fail_commits`` answers commits with 500.

``with serve_in_thread(token="hf_x") as hub: ...``; ``hub.repo("me/demo")`` returns a snapshot of a repo
(commits, current files as bytes, visibility); ``hub.requests`` lists ``(method, path)`` of every call.
``python -m factory.testing.hub_server --port 0 --token T`` prints ``listening on URL`` once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import yaml
from aiohttp import web

__all__ = ["HubConfig", "HubHandle", "HubState", "RepoView", "main", "serve_in_thread"]

HOST = "127.0.0.1"
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".gguf", ".pt", ".zip", ".gz", ".npy")
GITATTRIBUTES = b"".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n".encode() for s in LFS_SUFFIXES)
MAX_BODY = 1 << 30


@dataclass
class HubConfig:
    token: str = "hf_fake_token"
    """The one token accepted (``Authorization: Bearer TOKEN``)."""
    user: str = "me"
    """The token's user; it may write under its own name and ``orgs``."""
    orgs: tuple[str, ...] = ()
    lfs_threshold: int = 10 * 1024 * 1024
    """Files at least this large go through LFS, like those matching ``LFS_SUFFIXES``."""
    lfs: bool = True
    """False: every file is committed inline (``uploadMode: regular``)."""
    fail_commits: bool = False
    """Answer every commit with 500 (nothing is stored)."""
    page_size: int = 1000
    """Tree listing entries per page."""


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def blob_id(self) -> str:
        """The git blob id: of the content, or of the LFS pointer for an LFS file."""
        raw = self.pointer if self.lfs else self.data
        return hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id


@dataclass
class Commit:
    id: str
    summary: str
    description: str
    files: dict[str, StoredFile]
    date: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


@dataclass(frozen=True)
class RepoView:
    """A copy of a repo's state, safe to read from any thread."""

    repo_id: str
    repo_type: str
    private: bool
    commits: list[dict[str, Any]]
    """Oldest first: ``{"id", "summary", "description", "files": {path: bytes}}``."""
    files: dict[str, bytes]
    lfs_paths: frozenset[str]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return _json({"error": message}, status, headers)


class HubState:
    """Repos and handlers. All mutation happens on the server's event loop."""

    def __init__(self, config: HubConfig):
        self.config = config
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.endpoint = ""
        self._upload_keys: dict[str, tuple[str, int]] = {}  # secret -> (oid, size): like presigned URLs
        self._commit_seq = 0
        t = r"(?P<type>models|datasets|spaces)"
        repo = r"(?P<repo>[^/]+/[^/]+)"
        p = r"(?P<prefix>datasets/|spaces/)?"
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/api/whoami-v2"), self.whoami),
            ("GET", re.compile(r"/api/agent-harnesses"), self.agent_harnesses),
            ("POST", re.compile(r"/api/validate-yaml"), self.validate_yaml),
            ("POST", re.compile(r"/api/repos/create"), self.create_repo),
            ("GET", re.compile(rf"/api/{t}/{repo}(?:/revision/(?P<rev>[^/]+))?"), self.repo_info),
            ("POST", re.compile(rf"/api/{t}/{repo}/preupload/(?P<rev>[^/]+)"), self.preupload),
            ("POST", re.compile(rf"/api/{t}/{repo}/paths-info/(?P<rev>[^/]+)"), self.paths_info),
            ("GET", re.compile(rf"/api/{t}/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), self.tree),
            ("POST", re.compile(rf"/api/{t}/{repo}/commit/(?P<rev>[^/]+)"), self.commit),
            ("*", re.compile(rf"/api/{t}/{repo}/xet-(?:read|write)-token(?:/.*)?"), self.xet_token),
            ("POST", re.compile(rf"/{p}{repo}\.git/info/lfs/objects/batch"), self.lfs_batch),
            ("PUT", re.compile(r"/__lfs/upload/(?P<key>[0-9a-f]+)"), self.lfs_put),
            ("POST", re.compile(r"/__lfs/verify/(?P<oid>[0-9a-f]{64})"), self.lfs_verify),
            ("GET", re.compile(rf"/{p}{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), self.resolve),
        ]

    # -- plumbing --------------------------------------------------------------------------------------
    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        self.requests.append((request.method, path))
        method = "GET" if request.method == "HEAD" else request.method
        for want, pattern, handler in self.routes:
            m = pattern.fullmatch(path)
            if m and want in (method, "*"):
                args = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                auth = request.headers.get("Authorization")
                if auth is not None and auth != f"Bearer {self.config.token}":
                    return _error(401, "Invalid credentials in Authorization header")
                result: web.StreamResponse = await handler(request, **args)
                return result
        return _error(404, f"no route for {request.method} {path}")

    def _authed(self, request: web.BaseRequest) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.config.token}"

    def _repo(self, request: web.BaseRequest, type_: str, repo_id: str) -> Repo | web.Response:
        repo = self.repos.get((TYPES.get(type_, type_), repo_id))
        if repo is None or (repo.private and not self._authed(request)):
            return _error(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable(self, request: web.BaseRequest, type_: str, repo_id: str) -> Repo | web.Response:
        if not self._authed(request):
            return _error(401, "You must be authenticated to write to this repo")
        repo = self._repo(request, type_, repo_id)
        if isinstance(repo, Repo) and repo_id.split("/")[0] not in (self.config.user, *self.config.orgs):
            return _error(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit_at(self, repo: Repo, rev: str) -> Commit | web.Response:
        if rev == "main":
            return repo.head
        for c in repo.commits:
            if c.id == rev:
                return c
        return _error(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _new_commit(self, repo: Repo, summary: str, description: str, files: dict[str, StoredFile]) -> Commit:
        self._commit_seq += 1
        seed = orjson.dumps(
            [repo.repo_id, self._commit_seq, summary, sorted((p, f.blob_id) for p, f in files.items())]
        )
        c = Commit(hashlib.sha1(seed).hexdigest(), summary, description, files, _now())
        repo.commits.append(c)
        return c

    def _lfs_mode(self, path: str, size: int) -> bool:
        return (
            self.config.lfs
            and size > 0
            and (path.endswith(LFS_SUFFIXES) or size >= self.config.lfs_threshold)
        )

    def _entry(self, repo: Repo, commit: Commit, path: str) -> dict[str, Any] | None:
        f = commit.files.get(path)
        if f is not None:
            out: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": path}
            if f.lfs:
                out["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            return out
        prefix = path.rstrip("/") + "/"
        if path and any(p.startswith(prefix) for p in commit.files):
            digest = hashlib.sha1(orjson.dumps(sorted((p, f.blob_id) for p, f in commit.files.items()
                                                      if p.startswith(prefix)))).hexdigest()  # fmt: skip
            return {"type": "directory", "oid": digest, "size": 0, "path": path.rstrip("/")}
        return None

    # -- account ---------------------------------------------------------------------------------------
    async def whoami(self, request: web.BaseRequest) -> web.Response:
        if not self._authed(request):
            return _error(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": o, "roleInOrg": "write"} for o in self.config.orgs]
        return _json({
            "type": "user", "id": "0" * 24, "name": self.config.user, "fullname": self.config.user, "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        })  # fmt: skip

    async def agent_harnesses(self, request: web.BaseRequest) -> web.Response:
        return _json({"standardEnvVars": [], "harnesses": {}})

    async def validate_yaml(self, request: web.BaseRequest) -> web.Response:
        body = orjson.loads(await request.read())
        content = str(body.get("content", ""))
        m = re.match(r"---\r?\n(.*?)\r?\n---", content, re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as exc:
                return _json({"errors": [{"message": f"invalid YAML: {exc}"}]}, 400)
            if meta is not None and not isinstance(meta, dict):
                return _json({"errors": [{"message": "the metadata must be a YAML mapping"}]}, 400)
        return _json({"errors": [], "warnings": []})

    # -- repos -----------------------------------------------------------------------------------------
    async def create_repo(self, request: web.BaseRequest) -> web.Response:
        if not self._authed(request):
            return _error(401, "You must be authenticated to create a repo")
        body = orjson.loads(await request.read())
        type_ = body.get("type") or "model"
        owner = body.get("organization") or self.config.user
        name = str(body.get("name", ""))
        if type_ not in PREFIXES or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            return _error(400, f"invalid repo type or name: {type_!r} {name!r}")
        if owner not in (self.config.user, *self.config.orgs):
            return _error(403, f"You don't have the rights to create a {type_} under the namespace {owner!r}")
        repo_id = f"{owner}/{name}"
        if (type_, repo_id) in self.repos:
            existing = self.repos[(type_, repo_id)]
            return _json({"error": "You already created this repo", "url": self._url(existing)}, 409)
        repo = Repo(repo_id, type_, body.get("visibility") == "private" or bool(body.get("private")), _now())
        self.repos[(type_, repo_id)] = repo
        self._new_commit(repo, "initial commit", "", {".gitattributes": StoredFile(GITATTRIBUTES, False)})
        return _json({"url": self._url(repo), "name": repo_id, "id": "0" * 24})

    async def repo_info(
        self, request: web.BaseRequest, type: str, repo: str, rev: str = "main"
    ) -> web.Response:
        r = self._repo(request, type, repo)
        if not isinstance(r, Repo):
            return r
        c = self._commit_at(r, rev)
        if not isinstance(c, Commit):
            return c
        siblings = []
        for path, f in sorted(c.files.items()):
            s: dict[str, Any] = {"rfilename": path, "size": len(f.data), "blobId": f.blob_id}
            if f.lfs:
                s["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(s)
        info: dict[str, Any] = {
            "_id": "0" * 24, "id": r.repo_id, "author": r.repo_id.split("/")[0], "sha": c.id, "private": r.private,
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "createdAt": r.created_at, "lastModified": c.date,
        }  # fmt: skip
        card = c.files.get("README.md")
        if card is not None:
            m = re.match(rb"---\r?\n(.*?)\r?\n---", card.data, re.S)
            with contextlib.suppress(yaml.YAMLError, UnicodeDecodeError):
                meta = yaml.safe_load(m.group(1).decode()) if m else None
                if isinstance(meta, dict):
                    info["cardData"] = meta
        return _json(info)

    async def preupload(self, request: web.BaseRequest, type: str, repo: str, rev: str) -> web.Response:
        r = self._writable(request, type, repo)
        if not isinstance(r, Repo):
            return r
        c = self._commit_at(r, rev)
        if not isinstance(c, Commit):
            return c
        body = orjson.loads(await request.read())
        files = []
        for f in body.get("files", []):
            path, size = f["path"], int(f["size"])
            entry: dict[str, Any] = {
                "path": path, "uploadMode": "lfs" if self._lfs_mode(path, size) else "regular", "shouldIgnore": False
            }  # fmt: skip
            current = c.files.get(path)
            if current is not None:
                entry["oid"] = current.sha256 if current.lfs else current.blob_id
            files.append(entry)
        return _json({"files": files, "commitOid": c.id})

    async def paths_info(self, request: web.BaseRequest, type: str, repo: str, rev: str) -> web.Response:
        r = self._repo(request, type, repo)
        if not isinstance(r, Repo):
            return r
        c = self._commit_at(r, rev)
        if not isinstance(c, Commit):
            return c
        form = await request.post()
        entries = [self._entry(r, c, str(p)) for p in form.getall("paths", [])]
        return _json([e for e in entries if e is not None])

    async def tree(
        self, request: web.BaseRequest, type: str, repo: str, rev: str, path: str = ""
    ) -> web.Response:
        r = self._repo(request, type, repo)
        if not isinstance(r, Repo):
            return r
        c = self._commit_at(r, rev)
        if not isinstance(c, Commit):
            return c
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and (path in c.files or not any(p.startswith(prefix) for p in c.files)):
            return _error(404, f"{path} is not a folder of {repo}", "EntryNotFound")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        names: set[str] = set()
        for p in c.files:
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts)) + 1):
                names.add(prefix + "/".join(parts[:i]))
        entries = [e for e in (self._entry(r, c, n) for n in sorted(names)) if e is not None]
        start = int(request.query.get("cursor", "0"))
        page = entries[start : start + self.config.page_size]
        headers = {}
        if start + self.config.page_size < len(entries):
            nxt = f"{request.url.with_query({**request.query, 'cursor': str(start + self.config.page_size)})}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        return _json(page, headers=headers)

    async def commit(self, request: web.BaseRequest, type: str, repo: str, rev: str) -> web.Response:
        r = self._writable(request, type, repo)
        if not isinstance(r, Repo):
            return r
        if rev != "main":
            return _error(400, "this fake Hub commits to main only")
        if self.config.fail_commits:
            return _error(500, "injected fault: the commit failed")
        header: dict[str, Any] = {}
        files = dict(r.head.files)
        for line in (await request.read()).splitlines():
            if not line.strip():
                continue
            item = orjson.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    return _error(400, f"unsupported encoding for {value.get('path')}")
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.lfs_objects.get(value["oid"])
                if data is None:
                    return _error(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(data, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return _error(
                        404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound"
                    )
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
            else:
                return _error(400, f"unknown commit operation {key!r}")
        if not header.get("summary"):
            return _error(400, "the commit header needs a summary")
        parent = header.get("parentCommit")
        if parent is not None and parent != r.head.id:
            return _error(412, "A commit has happened since. Please refresh and try again.")
        c = self._new_commit(r, header["summary"], header.get("description", ""), files)
        return _json({"success": True, "commitOid": c.id, "commitUrl": f"{self._url(r)}/commit/{c.id}",
                      "hookOutput": ""})  # fmt: skip

    async def xet_token(self, request: web.BaseRequest, type: str, repo: str) -> web.Response:
        return _error(501, "this fake Hub speaks LFS, not Xet: set HF_HUB_DISABLE_XET=1")

    # -- LFS -------------------------------------------------------------------------------------------
    async def lfs_batch(self, request: web.BaseRequest, repo: str, prefix: str = "") -> web.Response:
        type_ = {"datasets/": "datasets", "spaces/": "spaces"}.get(prefix, "models")
        r = self._writable(request, type_, repo)
        if not isinstance(r, Repo):
            return r
        body = orjson.loads(await request.read())
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            return _error(400, "this fake Hub takes basic LFS uploads only")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:
                key = secrets.token_hex(16)
                self._upload_keys[key] = (oid, size)
                out["actions"] = {
                    "upload": {"href": f"{self.endpoint}/__lfs/upload/{key}", "expires_in": 3600},
                    "verify": {"href": f"{self.endpoint}/__lfs/verify/{oid}"},
                }
            objects.append(out)
        return _json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    async def lfs_put(self, request: web.BaseRequest, key: str) -> web.Response:
        want = self._upload_keys.get(key)
        if want is None:
            return _error(403, "unknown or expired upload URL")
        data = await request.read()
        oid, size = want
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            return _error(400, f"the uploaded bytes do not match oid {oid} and size {size}")
        self.lfs_objects[oid] = data
        del self._upload_keys[key]
        return web.Response(status=200, headers={"ETag": f'"{oid[:32]}"'})

    async def lfs_verify(self, request: web.BaseRequest, oid: str) -> web.Response:
        if not self._authed(request):
            return _error(401, "You must be authenticated to verify an upload")
        body = orjson.loads(await request.read())
        data = self.lfs_objects.get(oid)
        if data is None or body.get("oid") != oid or int(body.get("size", -1)) != len(data):
            return _error(404, f"LFS object {oid} not found")
        return _json({"success": True})

    # -- downloads -------------------------------------------------------------------------------------
    async def resolve(
        self, request: web.BaseRequest, repo: str, rev: str, path: str, prefix: str = ""
    ) -> web.Response:
        type_ = {"datasets/": "datasets", "spaces/": "spaces"}.get(prefix, "models")
        r = self._repo(request, type_, repo)
        if not isinstance(r, Repo):
            return r
        c = self._commit_at(r, rev)
        if not isinstance(c, Commit):
            return c
        f = c.files.get(path)
        if f is None:
            return _error(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"X-Repo-Commit": c.id, "ETag": f'"{f.etag}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
        data, status = f.data, 200
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        return web.Response(
            status=status, body=data, headers=headers, content_type="application/octet-stream"
        )

    # -- inspection (called on the loop) ---------------------------------------------------------------
    def view(self, repo_id: str, repo_type: str) -> RepoView | None:
        r = self.repos.get((repo_type, repo_id))
        if r is None:
            return None
        commits: list[dict[str, Any]] = [{"id": c.id, "summary": c.summary, "description": c.description,
                                          "files": {p: f.data for p, f in c.files.items()}} for c in r.commits]  # fmt: skip
        files = {p: f.data for p, f in r.head.files.items()}
        lfs = frozenset(p for p, f in r.head.files.items() if f.lfs)
        return RepoView(r.repo_id, r.repo_type, r.private, commits, files, lfs)


class HubHandle:
    """The server on its own event loop in a daemon thread; a context manager. Methods are thread-safe."""

    def __init__(self, config: HubConfig, port: int = 0):
        self.config = config
        self.port = port
        self.state = HubState(config)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="hub-server", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self._call(lambda: list(self.state.requests)))

    def repo(self, repo_id: str, repo_type: str = "dataset") -> RepoView | None:
        view: RepoView | None = self._call(self.state.view, repo_id, repo_type)
        return view

    def set_faults(self, *, fail_commits: bool) -> None:
        self._call(setattr, self.config, "fail_commits", fail_commits)

    def start(self, timeout: float = 10.0) -> HubHandle:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"hub server thread did not start within {timeout}s")
        if self._error is not None:
            raise RuntimeError(f"hub server failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def request_factory(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

        server = web.Server(self.state.dispatch, request_factory=request_factory, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, HOST, self.port, reuse_address=True)
            await site.start()
            self.port = runner.addresses[0][1]
            self.state.endpoint = self.endpoint
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = self._loop
        if loop is None or not self._thread.is_alive():
            raise RuntimeError("hub server is not running")

        async def _do() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(_do(), loop).result(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> HubHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(config: HubConfig | None = None, *, port: int = 0, **options: Any) -> HubHandle:
    """Start a fake Hub in a background thread: ``with serve_in_thread(token="hf_x") as hub: hub.endpoint``.
    ``options`` are ``HubConfig`` fields and override ``config``."""
    cfg = dataclasses.replace(config or HubConfig(), **options)
    return HubHandle(cfg, port).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A local stand-in for the Hugging Face Hub (in memory).")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", default=HubConfig.token)
    p.add_argument("--user", default=HubConfig.user)
    p.add_argument("--no-lfs", action="store_true", help="commit every file inline")
    args = p.parse_args(argv)
    with serve_in_thread(port=args.port, token=args.token, user=args.user, lfs=not args.no_lfs) as hub:
        print(f"listening on {hub.endpoint}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
