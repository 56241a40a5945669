"""Service-account keys made on the fly, and a local OAuth token endpoint that checks them (tests only).

A key's `token_uri` points at the endpoint, so google-auth runs its real JWT-bearer flow offline: the endpoint
verifies the assertion's signature with the public key registered for its `kid` and issues a token, or answers
`invalid_grant` as Google does for a deleted key (DESIGN.md, "GCS and its emulators").
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import urllib.parse
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def new_private_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def service_account_info(private_key, token_uri: str, project: str = "ctexport-test", **over) -> dict:
    """The JSON of a service-account key holding `private_key`; `over` replaces or adds fields."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": uuid.uuid4().hex + uuid.uuid4().hex[:8],
        "private_key": pem,
        "client_email": f"exporter@{project}.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    info.update(over)
    return info


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenServer:
    """The endpoint on 127.0.0.1; a context manager. `granted` holds (client email, scope) per token issued."""

    def __init__(self):
        self.known: dict[str, object] = {}  # private_key_id -> public key
        self.granted: list[tuple[str, str | None]] = []
        self.tokens: set[str] = set()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/token"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def register(self, key_id: str, private_key) -> None:
        self.known[key_id] = private_key.public_key()

    @property
    def issued(self) -> int:
        return len(self.granted)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(server: TokenServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            assertion = form.get("assertion", [""])[0]
            if (
                form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                or assertion.count(".") != 2
            ):
                return self._reply(400, {"error": "invalid_request", "error_description": "Bad Request"})
            head, payload, sig = assertion.split(".")
            header = json.loads(_b64url_decode(head))
            claims = json.loads(_b64url_decode(payload))
            public = server.known.get(header.get("kid"))
            try:
                if public is None:
                    raise ValueError("unknown key")
                public.verify(
                    _b64url_decode(sig), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
                )
            except Exception:
                return self._reply(
                    400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
                )
            token = f"ya29.test-{uuid.uuid4().hex}"
            server.tokens.add(token)
            server.granted.append((claims["iss"], claims.get("scope")))
            return self._reply(200, {"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    return Handler
