"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's real client to create a
repository and a branch, commit files, and download them again (repository info, the file tree, and files by their
`resolve` URL). Every upload is answered "regular", so file contents arrive inline in the commit payload and the
server records exactly what would have been published. `serving()` points huggingface_hub's default endpoint at
it, so that diffusers' and hfddpm's downloads go there too."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from huggingface_hub import constants, hf_api


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id → {"private": bool, "commits": [{"revision", "message", "files"}]}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.hub = self
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @contextlib.contextmanager
    def serving(self, monkeypatch) -> Iterator[FakeHub]:
        """Run the server with huggingface_hub's default endpoint (what diffusers and hfddpm download from) at it."""
        monkeypatch.setattr(constants, "ENDPOINT", self.endpoint)
        template = self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(hf_api.api, "endpoint", self.endpoint)  # `model_info` and co. are methods of this one
        with self:
            yield self

    def published(self, repo_id: str) -> dict[str, bytes]:
        """The files of the repository after every commit, by path."""
        files: dict[str, bytes] = {}
        for commit in self.repos[repo_id]["commits"]:
            files.update(commit["files"])
        return files

    def add_repo(self, repo_id: str, folder: str | Path) -> None:
        """A repository holding every file of `folder`, as if pushed in one commit."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo_id] = {"private": False, "commits": [{"revision": "main", "message": "", "files": files}]}

    def commit_hash(self, repo_id: str) -> str:
        """A 40-hex commit id that changes with every commit."""
        return hashlib.sha1(f"{repo_id}:{len(self.repos[repo_id]['commits'])}".encode()).hexdigest()


def object_id(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 (http.server's naming)
        hub = self.server.hub
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hub.requests.append(("POST", self.path, dict(self.headers)))
        path = unquote(urlsplit(self.path).path)
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            private = request.get("visibility") == "private" or bool(request.get("private"))
            hub.repos.setdefault(repo_id, {"private": private, "commits": []})
            return self.send_json({"url": f"{hub.endpoint}/{repo_id}"})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self.send_json(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in path:
            return self.commit(path, body)
        if path == "/api/validate-yaml" or (path.startswith("/api/models/") and "/branch/" in path):
            return self.send_json({})
        return self.send_error(404)

    def commit(self, path: str, body: bytes):
        """/api/models/{repo_id}/commit/{revision}: the header line and one line per file, contents inline."""
        hub = self.server.hub
        repo_id, revision = path.removeprefix("/api/models/").split("/commit/")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = {
            line["value"]["path"]: base64.b64decode(line["value"]["content"])
            for line in lines
            if line["key"] == "file"
        }
        message = next(line["value"]["summary"] for line in lines if line["key"] == "header")
        hub.repos[repo_id]["commits"].append({"revision": revision, "message": message, "files": files})
        oid = hub.commit_hash(repo_id)
        return self.send_json({"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})

    def do_HEAD(self):  # noqa: N802
        self.download(send_body=False)

    def do_GET(self):  # noqa: N802
        self.download(send_body=True)

    def download(self, send_body: bool):
        """/api/models/{repo_id}[/revision/{rev}] (its info), /api/models/{repo_id}/tree/{rev} (its files) and
        /{repo_id}/resolve/{rev}/{filename} (a file, with the headers huggingface_hub's cache needs)."""
        hub = self.server.hub
        hub.requests.append((self.command, self.path, dict(self.headers)))
        path = unquote(urlsplit(self.path).path)
        api = path.startswith("/api/models/")
        parts = path.removeprefix("/api/models/" if api else "/").split("/")
        repo_id = "/".join(parts[:2])
        if repo_id not in hub.repos:
            return self.missing("RepoNotFound")
        files = hub.published(repo_id)
        if api and parts[2:3] == ["tree"]:
            tree = [
                {"type": "file", "path": name, "size": len(data), "oid": object_id(data)}
                for name, data in files.items()
            ]
            return self.send_json(tree, send_body)
        if api:
            siblings = [{"rfilename": name} for name in sorted(files)]
            info = {"id": repo_id, "sha": hub.commit_hash(repo_id), "private": hub.repos[repo_id]["private"]}
            return self.send_json({**info, "siblings": siblings}, send_body)
        data = files.get("/".join(parts[4:])) if parts[2:3] == ["resolve"] else None
        if data is None:
            return self.missing("EntryNotFound")
        self.send_response(200)
        self.send_header("X-Repo-Commit", hub.commit_hash(repo_id))
        self.send_header("ETag", f'"{object_id(data)}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)
        return None

    def missing(self, code: str):
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_json(self, value, send_body: bool = True):
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)
