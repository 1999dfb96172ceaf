"""A fake Vertex AI REST server on 127.0.0.1 that records job requests.

It creates and serves CustomJobs and HyperparameterTuningJobs (both answer to
create and get, named .../<collection>/4242).

The real google-cloud-aiplatform client talks to it with
api_endpoint="http://127.0.0.1:PORT", api_transport="rest" and anonymous
credentials. Jobs move through the given states, one per GET.
"""

import http.server
import json
import re
import threading

COLLECTIONS = ("customJobs", "hyperparameterTuningJobs")


class FakeVertex:
  def __init__(
    self,
    states=("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"),
    services=None,
  ):
    self.requests = []
    # Other Google APIs on the same port (tests/fake_image_services.py).
    self.services = services
    self.states = list(states)
    self.job = None  # The one job created, as served.
    self._gets = 0
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        del args

      def _reply(self, body, status=200):
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def _served(self, body=None):
        """Whether fake.services answered this request."""
        if fake.services is None:
          return False
        answer = fake.services.handle(self.command, self.path, body)
        if answer is None:
          return False
        self._reply(answer[1], answer[0])
        return True

      def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self._served(body):
          return
        fake.requests.append(
          {
            "method": "POST",
            "path": self.path,
            "body": body,
            "headers": dict(self.headers),
          }
        )
        match = re.match(
          r"/v1/projects/([^/]+)/locations/([^/]+)/"
          rf"({'|'.join(COLLECTIONS)})(\?|$)",
          self.path,
        )
        if not match:
          return self._reply(
            {"error": {"code": 404, "message": self.path}}, 404
          )
        fake.job = {
          **body,
          "name": f"projects/{match.group(1)}/locations/"
          f"{match.group(2)}/{match.group(3)}/4242",
          "state": fake.states[0],
          "createTime": "2026-01-01T00:00:00Z",
        }
        self._reply(fake.job)

      def do_GET(self):
        if self._served():
          return
        fake.requests.append({"method": "GET", "path": self.path})
        if not fake.job or self.path.split("?")[0] != f"/v1/{fake.job['name']}":
          return self._reply(
            {"error": {"code": 404, "message": self.path}}, 404
          )
        fake._gets += 1
        state = fake.states[min(fake._gets, len(fake.states) - 1)]
        self._reply({**fake.job, "state": state})

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(
      target=self.server.serve_forever, daemon=True
    )

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.server.shutdown()
    self.server.server_close()
