"""A TLS-terminating CONNECT proxy that sends Google Cloud Storage traffic to a
local fake-gcs-server. Test support; run as its own process:

    python tests/gcs_proxy.py PROXY_PORT EMULATOR_PORT CERT_PEM KEY_PEM [FAULTS_JSON]

TensorFlow's GCS client has fixed https endpoints (www.googleapis.com,
storage.googleapis.com) but honours HTTPS_PROXY and CURL_CA_BUNDLE. This proxy
accepts its CONNECT, presents a certificate signed by a test CA, and forwards
each decrypted request over plain HTTP to the emulator on 127.0.0.1. It never
opens a connection to any other address. It runs in its own process because
TensorFlow holds the GIL during some HTTP calls (an in-process proxy
deadlocks).

FAULTS_JSON, when it exists, makes transient failures: a list of {"match":
substring of the request line, "status": e.g. 503, "times": N}; the first N
matching requests are answered with that status instead of being forwarded
(the file is read on every request, so a test can change it mid-run).
"""

import http.client
import http.server
import json
import os
import socketserver
import ssl
import sys
import threading

HOP_BY_HOP = {
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "proxy-authorization",
  "content-length",
}


def _as_https(url):
  for prefix in ("http://", "https://"):
    if url.startswith(prefix):
      rest = url[len(prefix) :]
      host, _, path = rest.partition("/")
      if (
        host.split(":")[0] in ("127.0.0.1", "localhost") or "googleapis" in host
      ):
        return "https://www.googleapis.com/" + path
  return url


class ForwardingHandler(http.server.BaseHTTPRequestHandler):
  """Handles decrypted HTTP/1.1 requests on one tunnelled connection."""

  protocol_version = "HTTP/1.1"
  emulator_port = None
  server_faults_path = None

  def log_message(self, fmt, *args):
    sys.stderr.write(fmt % args + "\n")

  def _read_body(self):
    encoding = self.headers.get("Transfer-Encoding", "").lower()
    if encoding == "chunked":
      body = b""
      while True:
        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
          while self.rfile.readline().strip():
            pass
          return body
        body += self.rfile.read(size)
        self.rfile.readline()
    # TF sends "Transfer-Encoding: identity" on empty POSTs; fake-gcs-server
    # answers 501 to it, so it is dropped and the length used instead.
    length = int(self.headers.get("Content-Length") or 0)
    return self.rfile.read(length) if length else b""

  def _injected_fault(self):
    """The status of a fault rule this request matches (then counted), or
    None."""
    path = self.server_faults_path
    if not path or not os.path.exists(path):
      return None
    with open(path) as f:
      rules = json.load(f)
    request = f"{self.command} {self.path}"
    with FAULTS_LOCK:
      for index, rule in enumerate(rules):
        key = (index, rule["match"])
        if (
          rule["match"] in request and FAULTS_SERVED.get(key, 0) < rule["times"]
        ):
          FAULTS_SERVED[key] = FAULTS_SERVED.get(key, 0) + 1
          return rule["status"]
    return None

  def _forward(self):
    body = self._read_body()
    fault = self._injected_fault()
    if fault:
      self.send_response(fault)
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    headers = {
      k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP
    }
    headers["Content-Length"] = str(len(body))
    connection = http.client.HTTPConnection(
      "127.0.0.1", self.emulator_port, timeout=60
    )
    try:
      connection.request(self.command, self.path, body=body, headers=headers)
      response = connection.getresponse()
      payload = response.read()
      self.send_response(response.status, response.reason)
      for key, value in response.getheaders():
        if key.lower() == "location":
          # The emulator builds upload-session URLs from the Host header with
          # its own (http) scheme; keep them on https so they come back here.
          value = _as_https(value)
        if key.lower() not in HOP_BY_HOP:
          self.send_header(key, value)
      self.send_header("Content-Length", str(len(payload)))
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(payload)
    finally:
      connection.close()

  do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


FAULTS_LOCK = threading.Lock()
FAULTS_SERVED = {}  # (rule index, match) -> faults answered so far


class ConnectHandler(socketserver.StreamRequestHandler):
  """Answers CONNECT, then speaks TLS as the requested Google host."""

  tls_context = None

  def handle(self):
    request_line = self.rfile.readline().decode("latin-1")
    while self.rfile.readline().strip():
      pass
    if not request_line.startswith("CONNECT "):
      self.wfile.write(
        b"HTTP/1.1 405 Only CONNECT\r\nContent-Length: 0\r\n\r\n"
      )
      return
    sys.stderr.write(request_line)
    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    self.wfile.flush()
    try:
      tunnel = self.tls_context.wrap_socket(self.connection, server_side=True)
    except (ssl.SSLError, OSError):
      return
    try:
      ForwardingHandler(tunnel, self.client_address, self.server)
    except (ConnectionError, ssl.SSLError, OSError):
      pass


class Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True


def main():
  proxy_port, emulator_port, cert, key = sys.argv[1:5]
  ForwardingHandler.server_faults_path = (sys.argv[5:] or [None])[0]
  context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  context.load_cert_chain(cert, key)
  ConnectHandler.tls_context = context
  ForwardingHandler.emulator_port = int(emulator_port)
  with Server(("127.0.0.1", int(proxy_port)), ConnectHandler) as server:
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
  main()
