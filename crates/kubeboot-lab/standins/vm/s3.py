#!/usr/bin/python3
"""The site's S3 service (MinIO in TARGET.md), stood in by kubeboot's VM lab on one VM at the switch address the
guests' /etc/hosts give the inventory's s3_host. Path-style buckets only, what the shipped stages ask of it:
HEAD a bucket (200 or 404), PUT a bucket (with or without a CreateBucketConfiguration). A request must be signed
with AWS Signature Version 4 (the `Authorization: AWS4-HMAC-SHA256 Credential=...` header curl's --aws-sigv4
writes); the signature itself is not checked, since the lab never learns the keys: it holds no secret at all.
The buckets are kept in /var/lib/kubeboot-lab/s3.json, so they survive a reboot.
"""

import http.server
import json
import os
import re
import socket
import sys

STATE = "/var/lib/kubeboot-lab/s3.json"
SIGNED = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[^/\s]+/s3/aws4_request, SignedHeaders=\S+, Signature=[0-9a-f]{64}$")


def buckets():
    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return []


def save(names):
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    with open(STATE + ".tmp", "w") as f:
        json.dump(sorted(set(names)), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(STATE + ".tmp", STATE)


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stdout.write("s3 (stand-in): " + (fmt % args) + "\n")
        sys.stdout.flush()

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/xml")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def bucket(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if not SIGNED.match(self.headers.get("Authorization", "")) or not self.headers.get("x-amz-date"):
            self.answer(403, b"<Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>")
            return None
        name = self.path.split("?", 1)[0].strip("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", name):
            self.answer(400, b"<Error><Code>InvalidBucketName</Code></Error>")
            return None
        return name

    def do_HEAD(self):
        name = self.bucket()
        if name is not None:
            self.answer(200 if name in buckets() else 404)

    def do_PUT(self):
        name = self.bucket()
        if name is None:
            return
        have = buckets()
        if name in have:
            self.answer(409, b"<Error><Code>BucketAlreadyOwnedByYou</Code></Error>")
            return
        save(have + [name])
        self.answer(200)


class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True

    def server_bind(self):
        # IP_FREEBIND: the address may not be on the interface yet when the service starts at boot.
        self.socket.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        super().server_bind()


def main():
    address = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"
    server = Server((address, 80), Handler)
    print(f"s3 (stand-in): serving http://{address}:80", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
