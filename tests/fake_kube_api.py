"""A stand-in Kubernetes API server on 127.0.0.1 that records the objects
it receives, for the real `kubernetes` client (pointed at it by a kubeconfig
this writes). It creates, lists and deletes JobSets, Jobs and Services by
name or label, answering 409 for a name it has, 404 for one it has not and
for a namespace other than "default" (as the API server does, naming the
namespace); deleting a Job deletes what it owns (the garbage collector's
work). without_jobset makes it a cluster with no JobSet controller."""

import http.server
import json
import os
import re
import threading
import urllib.parse
import uuid

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
        if namespace != "default":
          return self._reply(
            404,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure",
             "reason": "NotFound", "code": 404,
             "message": f'namespaces "{namespace}" not found',
             "details": {"name": namespace, "kind": "namespaces"}},
          )  # fmt: skip
        key = (kind, namespace, body["metadata"]["name"])
        if key in fake.objects:
          return self._status(409, "AlreadyExists", f"{key} already exists")
        body["metadata"]["uid"] = str(uuid.uuid4())
        fake.objects[key] = body
        self._reply(201, body)

      def do_GET(self):
        fake.requests.append(("GET", self.path))
        route = self._route()
        if not route or route[2] is not None:
          return self._status(404, "NotFound", self.path)
        kind, namespace, _ = route
        items = fake.matching(kind, namespace, self.path)
        self._reply(
          200,
          {"kind": f"{kind}List", "apiVersion": "v1", "metadata": {},
           "items": items},
        )  # fmt: skip

      def do_DELETE(self):
        fake.requests.append(("DELETE", self.path))
        route = self._route()
        if not route:
          return self._status(404, "NotFound", self.path)
        kind, namespace, name = route
        if name is None:  # A collection, by label selector.
          for obj in fake.matching(kind, namespace, self.path):
            fake.delete((kind, namespace, obj["metadata"]["name"]))
          return self._reply(200, {"kind": "Status", "status": "Success"})
        if (kind, namespace, name) not in fake.objects:
          return self._status(404, "NotFound", f"{name} not found")
        # As the API server does: the object, now being deleted.
        self._reply(200, fake.delete((kind, namespace, name)))

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(
      target=self.server.serve_forever, daemon=True
    )

  def matching(self, kind, namespace, path):
    """The objects of `kind` in `namespace` that the labelSelector of
    `path` (a=b,c=d) selects."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
    wanted = dict(
      term.split("=", 1)
      for term in (query.get("labelSelector") or [""])[0].split(",")
      if term
    )
    return [
      o
      for (k, ns, _), o in self.objects.items()
      if k == kind
      and ns == namespace
      and all(
        o["metadata"].get("labels", {}).get(a) == b for a, b in wanted.items()
      )
    ]

  def delete(self, key):
    """Deletes the object and, as the garbage collector does, what it owns."""
    obj = self.objects.pop(key)
    uid = obj["metadata"].get("uid")
    for other, owned in list(self.objects.items()):
      owners = owned["metadata"].get("ownerReferences", [])
      if any(o["uid"] == uid for o in owners):
        self.delete(other)
    return obj

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
