"""The browser side of the API: the dashboard at `/`, its static files under `/web`, the npm-installed
assets under `/vendor` (uPlot, Swagger UI), the offline `/docs` page, and the security headers every
response carries.

The vendor assets come from `web/node_modules` (`make install` runs `npm ci` in `web/`); when they are
missing, `/`, `/docs` and `/vendor/...` answer 503 with the command that installs them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
NODE_MODULES = WEB_DIR / "node_modules"
VENDOR = {"uplot": NODE_MODULES / "uplot" / "dist", "swagger-ui": NODE_MODULES / "swagger-ui-dist"}
MISSING = (
    "The dashboard's browser assets are not installed ({missing}). Run `make install` "
    "(it runs `npm ci --ignore-scripts` in web/), then reload."
)

# No inline script or style anywhere: scripts and styles only from this origin. Swagger UI's and the
# dashboard's icons are data: URLs.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def missing_assets() -> list[str]:
    return [name for name, folder in VENDOR.items() if not folder.is_dir()]


def _missing_response() -> Response:
    return PlainTextResponse(MISSING.format(missing=", ".join(missing_assets())), status_code=503)


def install_web(app: FastAPI) -> None:
    """Mount the dashboard, /docs and /vendor, and add the security headers to every response."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/", include_in_schema=False)
    def dashboard() -> Response:
        return _missing_response() if missing_assets() else FileResponse(WEB_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return _missing_response() if missing_assets() else FileResponse(WEB_DIR / "docs.html")

    @app.get("/vendor/{package}/{path:path}", include_in_schema=False)
    def vendor(package: str, path: str) -> Response:
        folder = VENDOR.get(package)
        if folder is None:
            return PlainTextResponse(f"no vendor package {package!r}", status_code=404)
        if not folder.is_dir():
            return _missing_response()
        target = (folder / path).resolve()
        if not target.is_relative_to(folder.resolve()) or not target.is_file():
            return PlainTextResponse(f"no file {path!r} in {package}", status_code=404)
        return FileResponse(target)

    app.mount("/web", StaticFiles(directory=WEB_DIR / "static"), name="web")
