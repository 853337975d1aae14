"""Access rules of the viewer's HTTP server.

- Loopback by default; any other bind address needs a token (`assay view --token`), sent as
  `?token=` once (it becomes an HttpOnly cookie), a cookie, or `Authorization: Bearer`.
- On loopback the Host header must name loopback: a web page cannot reach the viewer
  through a DNS name that rebinds to 127.0.0.1.
- A POST from another origin is refused (a page on another site cannot write feedback).
- Every page carries a Content-Security-Policy with no inline script: model output that
  slipped past escaping still could not run.
"""

from __future__ import annotations

import ipaddress
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

COOKIE = "assay_token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(header: str) -> str:
    return (urlsplit(f"//{header}").hostname or "").lower()


class AccessMiddleware(BaseHTTPMiddleware):
    def __init__(self, app, token: str | None, loopback_only: bool) -> None:  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.token = token
        self.loopback_only = loopback_only

    async def dispatch(self, request: Request, call_next) -> Response:  # type: ignore[no-untyped-def]
        host = request.headers.get("host", "")
        if self.loopback_only and not is_loopback(_hostname(host)):
            return PlainTextResponse("this viewer answers on loopback only", status_code=403)
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != host:
                return PlainTextResponse("cross-origin request refused", status_code=403)
        if self.token:
            given = request.query_params.get("token")
            if given is not None and secrets.compare_digest(given.encode(), self.token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
                response: Response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
                return response
            sent = request.cookies.get(COOKIE) or ""
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                sent = auth[7:]
            if not secrets.compare_digest(sent.encode(), self.token.encode()):
                return PlainTextResponse(
                    "this viewer needs its token: open the URL `assay view` printed", 401
                )
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
