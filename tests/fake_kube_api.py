"""A stand-in Kubernetes API server on 127.0.0.1 that records the objects
it receives, for the real `kubernetes` client (pointed at it by a kubeconfig
this writes). It creates and deletes JobSets, Jobs and Services by name,
answering 409 for a name it has and 404 for one it has not; without_jobset
makes it a cluster with no JobSet controller (404 on that API)."""

import http.server
import json
import os
import re
import threading

PATHS = {
  "JobSet": r"/apis/jobset\.x-k8s\.io/v1alpha2/namespaces/([^/]+)/jobsets",
  "Job": r"/apis/batch/v1/namespaces/([^/]+)/jobs",
  "Service": r"/api/v1/namespaces/([^/]+)/services",
}


class FakeKubeApi:
  def __init__(self, without_jobset=False):
    self.objects = {}  # (kind, namespace, name) -> object
    self.requests = []  # (method, path)
    self.without_jobset = without_jobset
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        del args

      def _reply(self, status, body):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def _route(self):
        path = self.path.split("?")[0]
        for kind, pattern in PATHS.items():
          match = re.fullmatch(pattern + r"(?:/([^/]+))?", path)
          if match:
            if kind == "JobSet" and fake.without_jobset:
              return None
            return kind, match.group(1), match.group(2)
        return None

      def _status(self, code, reason, message):
        self._reply(
          code,
          {"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "message": message, "code": code},
        )  # fmt: skip

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        fake.requests.append(("POST", self.path))
        route = self._route()
        if not route:
          return self._status(
            404, "NotFound", f"the server could not find {self.path}"
          )
        kind, namespace, _ = route
        key = (kind, namespace, body["metadata"]["name"])
        if key in fake.objects:
          return self._status(409, "AlreadyExists", f"{key} already exists")
        fake.objects[key] = body
        self._reply(201, body)

      def do_DELETE(self):
        fake.requests.append(("DELETE", self.path))
        route = self._route()
        if not route:
          return self._status(404, "NotFound", self.path)
        kind, namespace, name = route
        if name is None:  # A collection, by label selector.
          selector = re.search(r"labelSelector=([^&]+)", self.path).group(1)
          label, _, value = (
            selector.replace("%3D", "=").replace("%2F", "/").partition("=")
          )
          for key in [
            k for k, o in fake.objects.items()
            if k[0] == kind and k[1] == namespace
            and o["metadata"].get("labels", {}).get(label) == value
          ]:  # fmt: skip
            del fake.objects[key]
          return self._reply(200, {"kind": "Status", "status": "Success"})
        if (kind, namespace, name) not in fake.objects:
          return self._status(404, "NotFound", f"{name} not found")
        # As the API server does: the object, now being deleted.
        self._reply(200, fake.objects.pop((kind, namespace, name)))

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(
      target=self.server.serve_forever, daemon=True
    )

  def kubeconfig(self, directory):
    """Writes a kubeconfig for this server; returns its path."""
    path = os.path.join(directory, "kubeconfig")
    config = {
      "apiVersion": "v1",
      "kind": "Config",
      "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
      "users": [{"name": "fake", "user": {"token": "test-token"}}],
      "contexts": [
        {"name": "fake", "context": {"cluster": "fake", "user": "fake"}}
      ],
      "current-context": "fake",
    }
    with open(path, "w") as f:
      json.dump(config, f)
    return path

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.server.shutdown()
    self.server.server_close()
