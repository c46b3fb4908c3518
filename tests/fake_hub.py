"""A small, stdlib-only Hugging Face Hub-protocol server for offline push/pull tests.

`FakeHub` serves the subset of the Hub HTTP API that `huggingface_hub` 2.4, `transformers` and
`datasets` call when they create repos, commit files (regular and LFS), branch, and download
(reference/hf_stack_notes.md §7). It listens on 127.0.0.1 with an ephemeral port and keeps every
repo in memory. Clients must be configured *before* they import `huggingface_hub`
(`HF_ENDPOINT` is read at import time), so tests drive them in a subprocess::

    with FakeHub() as hub:  # `client.py` stands for any script that pushes to "org/unimp"
        hub.run_python(["client.py"], home=tmp_path, cwd=REPO_ROOT)
        assert hub.read_file("org/unimp", "config.json")

`FakeHub.client_env(home)` gives the environment (``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``,
``HF_TOKEN=hf_fake``, offline flags off, every cache under `home`) for any other launcher. As a
pytest fixture (tests/ is on sys.path under pytest's default import mode)::

    from fake_hub import iter_fake_hub
    fake_hub = pytest.fixture(scope="module")(iter_fake_hub)

Implemented routes (``{type}`` is ``model``/``dataset``/``space``, ``{prefix}`` is ``""``,
``datasets/`` or ``spaces/``, ``{rev}`` is a branch, tag or full commit sha, URL-quoted):

- ``GET  /api/whoami-v2``
- ``POST /api/repos/create`` (409 when the repo exists), ``POST|DELETE /api/repos/delete``
- ``GET  /api/{type}s/{repo}`` and ``/api/{type}s/{repo}/revision/{rev}`` (``sha``, ``siblings``)
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]`` (``recursive``, ``expand``; missing path:
  404 ``X-Error-Code: EntryNotFound``)
- ``POST /api/{type}s/{repo}/paths-info/{rev}`` (form or JSON ``paths``)
- ``POST /api/{type}s/{repo}/preupload/{rev}`` (``lfs`` for binaries and .gitattributes patterns)
- ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON ``header``/``file``/``lfsFile``/``deletedFile``/
  ``deletedFolder``; ``create_pr=1`` opens ``refs/pr/N``; ``parentCommit`` is checked)
- ``GET  /api/{type}s/{repo}/refs``, ``GET /api/{type}s/{repo}/commits/{rev}``
- ``POST|DELETE /api/{type}s/{repo}/branch/{branch}`` (``startingPoint``), ``POST /api/{type}s/{repo}/tag/{rev}``
  and ``DELETE /api/{type}s/{repo}/tag/{tag}``
- ``POST /api/validate-yaml``
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` (basic transfer) and ``PUT /_lfs/{sha256}``
  (the blob is checked against its sha256)
- ``HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``/``X-Linked-Size`` for LFS files, and single ``Range`` requests

Any other route answers 404 and is recorded in `FakeHub.unhandled`, so a test can assert that a
client stayed inside the implemented protocol; a server bug answers 500 and lands in `FakeHub.errors`.
The last 10,000 requests are kept in `FakeHub.requests` as ``(method, path)``.
Private repos answer ``RepoNotFound`` to requests without an ``Authorization`` header; any token
is accepted. Bodies above `max_body_bytes` are refused (413).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

if TYPE_CHECKING:  # annotations only: the server itself is stdlib-only
    from typing_extensions import Self

__all__ = ["FakeHub", "HubError", "iter_fake_hub"]

REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# The Hub's default .gitattributes for new repos (abridged): these patterns are stored with LFS.
_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib",
    "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet",
    "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*", "*.png", "*.jpg", "*.jpeg", "*.webp",
)
_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS).encode()
_REGULAR_MAX_BYTES = 10 * 1024 * 1024
_SUBPROCESS_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")


class HubError(Exception):
    """An HTTP error answer: status, `X-Error-Code` header (optional) and message."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class _Blob:
    """One stored file version: content plus the ids the Hub reports for it."""

    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n"
        return pointer.encode()

    @property
    def git_oid(self) -> str:
        """The git blob sha1 (of the LFS pointer for LFS files), as the Hub's `oid`/`blobId`."""
        data = self.pointer if self.lfs else self.content
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def entry(self, path: str) -> dict[str, Any]:
        info: dict[str, Any] = {"type": "file", "path": path, "size": len(self.content), "oid": self.git_oid}
        if self.lfs:
            info["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(self.pointer)}
        return info


@dataclass
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, _Blob]


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    prs: int = 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _folder_oid(path: str, files: dict[str, _Blob]) -> str:
    digest = hashlib.sha1(path.encode())
    for name in sorted(files):
        if name.startswith(path + "/"):
            digest.update(name.encode() + files[name].git_oid.encode())
    return digest.hexdigest()


class FakeHub:
    """An in-memory Hub-protocol server on 127.0.0.1; use as a context manager or `start()`/`stop()`."""

    def __init__(
        self,
        *,
        user: str = "fake-user",
        orgs: Sequence[str] = ("org",),
        host: str = "127.0.0.1",
        max_body_bytes: int = 256 * 1024 * 1024,
        request_timeout_s: float = 30.0,
    ):
        if host != "127.0.0.1":
            raise ValueError(f"FakeHub only listens on loopback 127.0.0.1, not {host!r}")
        self.user, self.orgs, self.host = user, tuple(orgs), host
        self.max_body_bytes, self.request_timeout_s = max_body_bytes, request_timeout_s
        self.requests: deque[tuple[str, str]] = deque(maxlen=10_000)  # (method, path), oldest dropped
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []  # server-side exceptions answered with 500
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, bytes] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.host, 0), _Handler)
        server.hub = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join every server thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()  # joins the request threads (block_on_close)
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- client helpers
    def client_env(self, home: str | os.PathLike, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a client process that talks to this hub, with all caches under `home`."""
        home = Path(home)
        env = dict(os.environ if base is None else base)
        for name in _SUBPROCESS_OFFLINE_VARS:
            env[name] = "0"
        env.update({
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "hf_fake",
            "HF_HOME": str(home / "hf_home"),
            "HF_HUB_CACHE": str(home / "hf_home" / "hub"),
            "HF_MODULES_CACHE": str(home / "hf_modules"),
            "HF_DATASETS_CACHE": str(home / "hf_datasets"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "no_proxy": "127.0.0.1,localhost,::1",
        })
        for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(proxy, None)
        return env

    def run_python(
        self, args: Sequence[str], *, home: str | os.PathLike, timeout: float = 120, check: bool = True,
        cwd: str | os.PathLike | None = None,
    ) -> subprocess.CompletedProcess:
        """Run `python *args` against this hub (see `client_env`); raise with its output on failure."""
        proc = subprocess.run([sys.executable, *args], env=self.client_env(home), cwd=cwd, timeout=timeout,
                              capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"client exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}"
                f"\n--- unhandled routes: {self.unhandled}\n--- server errors: {self.errors}")
        return proc

    # ----------------------------------------------------------------------------- inspection
    def repo_ids(self, repo_type: str = "model") -> list[str]:
        with self._lock:
            return sorted(rid for (rtype, rid) in self._repos if rtype == repo_type)

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._get_repo(repo_type, repo_id).private

    def branches(self, repo_id: str, repo_type: str = "model") -> dict[str, str]:
        with self._lock:
            return dict(self._get_repo(repo_type, repo_id).branches)

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        with self._lock:
            return sorted(self._commit_at(self._get_repo(repo_type, repo_id), revision).files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        with self._lock:
            commit = self._commit_at(self._get_repo(repo_type, repo_id), revision)
            if path not in commit.files:
                raise KeyError(path)
            return commit.files[path].content

    def is_lfs(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bool:
        with self._lock:
            return self._commit_at(self._get_repo(repo_type, repo_id), revision).files[path].lfs

    def commit_titles(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Titles of the commits reachable from `revision`, newest first."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit: _Commit | None = self._commit_at(repo, revision)
            titles = []
            while commit is not None:
                titles.append(commit.title)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return titles

    # ----------------------------------------------------------------------------- state (lock held)
    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool = True) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> str:
        for name in (revision, revision.removeprefix("refs/heads/")):
            if name in repo.branches:
                return repo.branches[name]
        tag = revision.removeprefix("refs/tags/")
        if tag in repo.tags:
            return repo.tags[tag]
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _commit_at(self, repo: _Repo, revision: str) -> _Commit:
        return repo.commits[self._resolve(repo, revision)]

    def _new_commit(self, repo: _Repo, parent: str | None, title: str, message: str,
                    files: dict[str, _Blob]) -> _Commit:
        seed = f"{repo.repo_type}/{repo.repo_id}/{parent}/{title}/{next(self._counter)}/{time.time_ns()}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = _Commit(sha=sha, parent=parent, title=title, message=message, date=_now(), files=files)
        repo.commits[sha] = commit
        return commit

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _should_use_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern) for pattern in _LFS_PATTERNS):
            return True
        return size > _REGULAR_MAX_BYTES or b"\0" in sample


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads
    block_on_close = True
    allow_reuse_address = True
    hub: FakeHub

    def __init__(self, *args: Any, **kwargs: Any):
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.hub.request_timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ----------------------------------------------------------------------------- plumbing
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        self.segments = [unquote(s) for s in url.path.strip("/").split("/")] if url.path.strip("/") else []
        with self.hub._lock:
            self.hub.requests.append((method, url.path))
        try:
            body = self._read_body()
            status, headers, payload = self._route(method, body)
        except HubError as err:
            status, payload = err.status, json.dumps({"error": err.message}).encode()
            headers = {"Content-Type": "application/json",
                       "X-Error-Message": err.message.encode("ascii", "backslashreplace").decode()}
            if err.code:
                headers["X-Error-Code"] = err.code
        except (ValueError, KeyError, TypeError) as err:
            status, headers = 400, {"Content-Type": "application/json"}
            payload = json.dumps({"error": f"bad request: {err!r}"}).encode()
        except Exception:  # noqa: BLE001 - a FakeHub bug: answer 500, keep the traceback for the test
            trace = traceback.format_exc()
            with self.hub._lock:
                self.hub.errors.append(f"{method} {self.path}\n{trace}")
            status, headers, payload = 500, {"Content-Type": "application/json"}, json.dumps({"error": trace}).encode()
        self._send(method, status, headers, payload)

    def _read_body(self) -> bytes:
        limit = self.hub.max_body_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > limit:
                    self.close_connection = True
                    raise HubError(413, "request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self.close_connection = True
            raise HubError(413, "request body too large")
        return self.rfile.read(length) if length else b""

    def _send(self, method: str, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(payload)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and payload:
            self.wfile.write(payload)

    def _json(self, data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "application/json"}, json.dumps(data).encode()

    @property
    def authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _repo(self, repo_type: str, namespace: str, name: str) -> _Repo:
        return self.hub._get_repo(repo_type, f"{namespace}/{name}", authorized=self.authorized)

    # ----------------------------------------------------------------------------- routing
    def _route(self, method: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        seg = self.segments
        if seg[:1] == ["api"]:
            if seg == ["api", "whoami-v2"] and method == "GET":
                return self._whoami()
            if seg == ["api", "validate-yaml"] and method == "POST":
                return self._json({"errors": [], "warnings": []})
            if seg == ["api", "repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if seg == ["api", "repos", "delete"] and method in ("POST", "DELETE"):
                return self._delete_repo(json.loads(body or b"{}"))
            if len(seg) >= 4 and seg[1].endswith("s") and seg[1][:-1] in REPO_TYPES:
                return self._repo_api(method, seg[1][:-1], seg[2], seg[3], seg[4:], body)
        elif seg[:1] == ["_lfs"] and len(seg) == 2 and method == "PUT":
            return self._lfs_put(seg[1], body)
        else:
            repo_type = "model"
            rest = seg
            if rest[:1] in (["datasets"], ["spaces"]):
                repo_type, rest = rest[0][:-1], rest[1:]
            is_lfs_batch = (len(rest) == 6 and rest[1].endswith(".git")
                            and rest[2:] == ["info", "lfs", "objects", "batch"])
            if is_lfs_batch and method == "POST":
                return self._lfs_batch(repo_type, rest[0], rest[1][: -len(".git")], json.loads(body))
            if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve_file(repo_type, rest[0], rest[1], rest[3], "/".join(rest[4:]))
        with self.hub._lock:
            self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"FakeHub does not implement {method} {self.path}")

    def _repo_api(self, method: str, repo_type: str, namespace: str, name: str, rest: list[str],
                  body: bytes) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        action = rest[0] if rest else None
        with hub._lock:
            if method == "GET" and action is None:
                return self._repo_info(self._repo(repo_type, namespace, name), "main")
            if method == "GET" and action == "revision" and len(rest) >= 2:
                return self._repo_info(self._repo(repo_type, namespace, name), "/".join(rest[1:]))
            if method == "GET" and action == "tree" and len(rest) >= 2:
                return self._tree(self._repo(repo_type, namespace, name), rest[1], "/".join(rest[2:]))
            if method == "POST" and action == "paths-info" and len(rest) >= 2:
                return self._paths_info(self._repo(repo_type, namespace, name), "/".join(rest[1:]), body)
            if method == "POST" and action == "preupload" and len(rest) >= 2:
                return self._preupload(self._repo(repo_type, namespace, name), "/".join(rest[1:]), json.loads(body))
            if method == "POST" and action == "commit" and len(rest) >= 2:
                return self._commit(self._repo(repo_type, namespace, name), "/".join(rest[1:]), body)
            if method == "GET" and action == "refs" and len(rest) == 1:
                return self._refs(self._repo(repo_type, namespace, name))
            if method == "GET" and action == "commits" and len(rest) >= 2:
                return self._commits(self._repo(repo_type, namespace, name), "/".join(rest[1:]))
            if action == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
                payload = json.loads(body) if body else {}
                return self._branch(method, self._repo(repo_type, namespace, name), "/".join(rest[1:]), payload)
            if action == "tag" and len(rest) >= 2 and method in ("POST", "DELETE"):
                payload = json.loads(body) if body else {}
                return self._tag(method, self._repo(repo_type, namespace, name), "/".join(rest[1:]), payload)
        with hub._lock:
            hub.unhandled.append((method, self.path))
        raise HubError(404, f"FakeHub does not implement {method} {self.path}")

    # ----------------------------------------------------------------------------- endpoints
    def _whoami(self) -> tuple[int, dict[str, str], bytes]:
        if not self.authorized:
            raise HubError(401, "Invalid credentials in Authorization header")
        hub = self.hub
        return self._json({
            "type": "user", "id": "0" * 24, "name": hub.user, "fullname": "Fake User",
            "email": f"{hub.user}@example.invalid", "emailVerified": True, "isPro": False,
            "orgs": [{"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"} for org in hub.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
        })

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        name = payload["name"]
        namespace = payload.get("organization") or hub.user
        if namespace != hub.user and namespace not in hub.orgs:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with hub._lock:
            if (repo_type, repo_id) in hub._repos:
                repo = hub._repos[(repo_type, repo_id)]
                body = {"error": f"You already created this {repo_type} repo", "url": hub._repo_url(repo)}
                return self._json(body, status=409)
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            first = hub._new_commit(repo, None, "initial commit", "",
                                    {".gitattributes": _Blob(_GITATTRIBUTES, lfs=False)})
            repo.branches["main"] = first.sha
            hub._repos[(repo_type, repo_id)] = repo
            return self._json({"url": hub._repo_url(repo), "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
        with hub._lock:
            hub._get_repo(repo_type, repo_id)
            del hub._repos[(repo_type, repo_id)]
        return self._json({})

    def _repo_info(self, repo: _Repo, revision: str) -> tuple[int, dict[str, str], bytes]:
        commit = self.hub._commit_at(repo, revision)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = commit.files[path].entry(path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["size"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        namespace = repo.repo_id.split("/")[0]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "author": namespace,
            "sha": commit.sha, "private": repo.private, "gated": False, "disabled": False,
            "createdAt": repo.created_at, "lastModified": commit.date, "downloads": 0, "likes": 0,
            "tags": [], "siblings": siblings,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return self._json(info)

    def _entries(self, commit: _Commit, directory: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{directory}/" if directory else ""
        files, folders = [], set()
        for path, blob in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(blob.entry(path))
        entries = [{"type": "directory", "path": f, "oid": _folder_oid(f, commit.files)} for f in sorted(folders)]
        return entries + files

    def _with_last_commit(self, entries: list[dict[str, Any]], commit: _Commit) -> list[dict[str, Any]]:
        if self.query.get("expand", "").lower() in ("1", "true"):
            for entry in entries:
                entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        return entries

    def _is_folder(self, commit: _Commit, path: str) -> bool:
        return path == "" or any(name.startswith(path + "/") for name in commit.files)

    def _tree(self, repo: _Repo, revision: str, path: str) -> tuple[int, dict[str, str], bytes]:
        commit = self.hub._commit_at(repo, revision)
        path = path.strip("/")
        if not self._is_folder(commit, path):
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        return self._json(self._with_last_commit(self._entries(commit, path, recursive), commit))

    def _paths_info(self, repo: _Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        commit = self.hub._commit_at(repo, revision)
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = json.loads(body)
            paths, expand = payload.get("paths", []), payload.get("expand", False)
            self.query["expand"] = str(expand)
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            self.query["expand"] = (form.get("expand") or ["false"])[-1]
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in commit.files:
                out.append(commit.files[path].entry(path))
            elif path and self._is_folder(commit, path):
                out.append({"type": "directory", "path": path, "oid": _folder_oid(path, commit.files)})
        return self._json(self._with_last_commit(out, commit))

    def _preupload(self, repo: _Repo, revision: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        commit = self.hub._commit_at(repo, revision)
        files = []
        for item in payload["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample") or "")
            mode = "lfs" if self.hub._should_use_lfs(path, size, sample) else "regular"
            remote = commit.files.get(path)
            oid = None if remote is None else (remote.sha256 if mode == "lfs" else remote.git_oid)
            files.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return self._json({"files": files, "commitOid": commit.sha})

    def _lfs_batch(self, repo_type: str, namespace: str, name: str,
                   payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        with hub._lock:
            self._repo(repo_type, namespace, name)
            if payload.get("operation") != "upload":
                raise HubError(400, "FakeHub's LFS batch API only supports operation=upload")
            objects = []
            for obj in payload["objects"]:
                oid, size = obj["oid"], int(obj["size"])
                entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in hub._lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.endpoint}/_lfs/{oid}", "expires_in": 3600}}
                objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return 200, headers, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"LFS upload does not match its sha256 {oid}")
        with self.hub._lock:
            self.hub._lfs[oid] = body
        return 200, {"ETag": f'"{oid}"'}, b""

    def _commit(self, repo: _Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if self.headers.get("Content-Type", "").startswith("application/json") and len(lines) == 1:
            legacy = lines[0]  # old JSON payload: {"summary", "description", "files", "lfsFiles", "deletedFiles"}
            lines = [{"key": "header", "value": {"summary": legacy.get("summary", ""),
                                                 "description": legacy.get("description", "")}}]
            lines += [{"key": "file", "value": f} for f in legacy.get("files", [])]
            lines += [{"key": "lfsFile", "value": f} for f in legacy.get("lfsFiles", [])]
            lines += [{"key": "deletedFile", "value": f} for f in legacy.get("deletedFiles", [])]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "commit header with a summary is required")
        create_pr = self.query.get("create_pr") in ("1", "true")
        head = hub._resolve(repo, revision)
        parent_commit = header.get("parentCommit")
        if parent_commit and parent_commit != head:
            raise HubError(412, f"parentCommit {parent_commit} is not the head of {revision}")
        files = dict(repo.commits[head].files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                content = base64.b64decode(value["content"])
                files[value["path"]] = _Blob(content, lfs=hub._should_use_lfs(value["path"], len(content), b""))
                if files[value["path"]].lfs and len(content) > _REGULAR_MAX_BYTES:
                    raise HubError(400, f"{value['path']} is too large for a regular commit: use LFS")
            elif key == "lfsFile":
                if value["oid"] not in hub._lfs:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = _Blob(hub._lfs[value["oid"]], lfs=True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"cannot delete missing file {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            elif key != "header":
                raise HubError(400, f"unknown commit operation {key!r}")
        commit = hub._new_commit(repo, head, header["summary"], header.get("description", ""), files)
        url = f"{hub._repo_url(repo)}/commit/{commit.sha}"
        pr_url = None
        if create_pr:
            repo.prs += 1
            repo.branches[f"refs/pr/{repo.prs}"] = commit.sha
            pr_url = f"{hub._repo_url(repo)}/discussions/{repo.prs}"
        else:
            branch = revision.removeprefix("refs/heads/")
            if branch not in repo.branches:
                raise HubError(400, f"cannot commit to {revision}: not a branch")
            repo.branches[branch] = commit.sha
        return self._json({"success": True, "commitOid": commit.sha, "commitUrl": url, "pullRequestUrl": pr_url})

    def _refs(self, repo: _Repo) -> tuple[int, dict[str, str], bytes]:
        def ref(name: str, kind: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        branches = [ref(n, "heads", s) for n, s in repo.branches.items() if not n.startswith("refs/")]
        prs = [{"name": n, "ref": n, "targetCommit": s} for n, s in repo.branches.items() if n.startswith("refs/pr/")]
        tags = [ref(n, "tags", s) for n, s in repo.tags.items()]
        return self._json({"branches": branches, "converts": [], "tags": tags, "pullRequests": prs})

    def _commits(self, repo: _Repo, revision: str) -> tuple[int, dict[str, str], bytes]:
        commit: _Commit | None = self.hub._commit_at(repo, revision)
        out = []
        while commit is not None:
            out.append({"id": commit.sha, "title": commit.title, "message": commit.message, "date": commit.date,
                        "authors": [{"user": self.hub.user}]})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return self._json(out)

    def _branch(self, method: str, repo: _Repo, branch: str,
                payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if branch.startswith("refs/"):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"branch {branch} not found", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "cannot delete the default branch")
            del repo.branches[branch]
            return self._json({})
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = self.hub._resolve(repo, payload.get("startingPoint") or "main")
        return self._json({})

    def _tag(self, method: str, repo: _Repo, name: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if method == "DELETE":
            if name not in repo.tags:
                raise HubError(404, f"tag {name} not found", "RevisionNotFound")
            del repo.tags[name]
            return self._json({})
        tag = payload["tag"]  # POST .../tag/{revision} with {"tag": name}
        if tag in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{tag}")
        repo.tags[tag] = self.hub._resolve(repo, name)
        return self._json({})

    def _resolve_file(self, repo_type: str, namespace: str, name: str, revision: str,
                      path: str) -> tuple[int, dict[str, str], bytes]:
        hub = self.hub
        with hub._lock:
            repo = self._repo(repo_type, namespace, name)
            commit = hub._commit_at(repo, revision)
            blob = commit.files.get(path)
            if blob is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            sha = commit.sha
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream",
                   "Content-Disposition": f'inline; filename="{quote(path)}"'}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.content))
        content = blob.content
        byte_range = self.headers.get("Range")
        if byte_range:
            start, end = self._parse_range(byte_range, len(content))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return 206, headers, content[start:end + 1]
        return 200, headers, content

    @staticmethod
    def _parse_range(value: str, size: int) -> tuple[int, int]:
        unit, _, spec = value.partition("=")
        if unit.strip() != "bytes" or "," in spec:
            raise HubError(416, f"unsupported Range {value!r}")
        first, _, last = spec.strip().partition("-")
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            raise HubError(416, f"Range {value!r} not satisfiable for {size} bytes")
        return start, end


def iter_fake_hub(**kwargs: Any) -> Iterator[FakeHub]:
    """Generator for a pytest fixture: ``fake_hub = pytest.fixture(scope="module")(iter_fake_hub)``."""
    with FakeHub(**kwargs) as hub:
        yield hub
