"""A local stand-in for the Hugging Face Hub's HTTP API, enough for huggingface_hub's create_repo, create_branch
and upload_folder: every upload is answered "regular", so file contents arrive inline in the commit payload and
the server can record exactly what would have been published."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id → {"private": bool, "commits": [{"revision", "message", "files"}]}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path, dict(self.headers)))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
                    private = request.get("visibility") == "private" or bool(request.get("private"))
                    hub.repos.setdefault(repo_id, {"private": private, "commits": []})
                    return self._json({"url": f"{hub.endpoint}/{repo_id}"})
                if path == "/api/validate-yaml":
                    return self._json({})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    upload = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json({"files": upload})
                if "/commit/" in path:
                    repo_id = path.split("/api/models/")[1].split("/commit/")[0]
                    revision = path.split("/commit/")[1]
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    files = {
                        line["value"]["path"]: base64.b64decode(line["value"]["content"])
                        for line in lines
                        if line["key"] == "file"
                    }
                    message = next(line["value"]["summary"] for line in lines if line["key"] == "header")
                    hub.repos[repo_id]["commits"].append({"revision": revision, "message": message, "files": files})
                    oid = hashlib.sha1(body).hexdigest()
                    return self._json({"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})
                if path.startswith("/api/models/") and "/branch/" in path:
                    return self._json({})
                self.send_error(404)

            def _json(self, value):
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def published(self, repo_id: str) -> dict[str, bytes]:
        """The files of the repository after every commit, by path."""
        files: dict[str, bytes] = {}
        for commit in self.repos[repo_id]["commits"]:
            files.update(commit["files"])
        return files
