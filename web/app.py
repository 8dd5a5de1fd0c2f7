"""``govmdm review serve``: the review queue as web pages, for one steward on their own machine.

The server binds 127.0.0.1 only and answers only requests for ``127.0.0.1``/``localhost`` (a
page elsewhere cannot reach it by renaming itself, DNS rebinding). Other accounts on the same
machine can reach the port, so every request must carry the secret the command prints once,
in the address it prints; the first request trades it for an HttpOnly, SameSite=Strict cookie.
A decision is a POST with a CSRF token drawn from that secret, and goes through
:func:`access.review.decide_pair`, that is :func:`access.review.decide`, like ``govmdm review
decide``: recorded and audited under the login serving the page, the steward.

>>> app = create_app(city, token=new_token())
>>> serve(app, port=8765)  # until Ctrl-C
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import jinja2
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from access.errors import AccessError
from access.review import DECISIONS, ReviewError, decide_pair, pair, queue, recent_decisions
from etl.config import CityConfig
from web.charts import highlight, waterfall

HOST = "127.0.0.1"
COOKIE = "govmdm_review"
SKIP = "skip"
TEMPLATES = Path(__file__).with_name("templates")
_FIELD_ZH = {
    "name": "姓名/名称",
    "id_number": "身份证号",
    "sex": "性别",
    "birth_date": "出生日期",
    "phone": "电话",
    "address": "地址",
    "uscc": "统一社会信用代码",
    "reg_no": "注册号",
    "org_code": "组织机构代码",
    "legal_rep_name": "法定代表人",
    "record": "源记录",
    "link_rule": "链接依据",
    "updated_at": "更新时间",
}


def csrf_token(token: str) -> str:
    """The form token of the session whose secret is ``token``."""
    return hmac.new(token.encode(), b"govmdm review csrf", hashlib.sha256).hexdigest()


class _Gate(BaseHTTPMiddleware):
    """Only the holder of the secret: its cookie, or the printed address (which sets it)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given, self.token):
            url = request.url.remove_query_params("token")
            response = RedirectResponse(str(url), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if not hmac.compare_digest(request.cookies.get(COOKIE, ""), self.token):
            return HTMLResponse(
                "<h1>403</h1><p>Open the address `govmdm review serve` printed (it carries "
                "the session's secret).</p>",
                status_code=403,
            )
        return await call_next(request)


def create_app(city: CityConfig, *, token: str, privileged: bool = False) -> Starlette:
    """The review pages of ``city``; ``privileged`` shows values in clear (the caller's
    privilege is checked on every page, not taken from here)."""
    pages = _Pages(city, token, privileged)
    return Starlette(
        routes=[
            Route("/", pages.queue_page),
            Route("/pair/{ref:str}", pages.pair_page, methods=["GET"]),
            Route("/pair/{ref:str}", pages.decide_page, methods=["POST"]),
        ],
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"]),
            Middleware(_Gate, token=token),
        ],
    )


class _Pages:
    """The pages, and what this session remembers: pairs skipped, pairs decided."""

    def __init__(self, city: CityConfig, token: str, privileged: bool) -> None:
        self.city, self.token, self.privileged = city, token, privileged
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.globals.update(highlight=highlight, field_zh=lambda f: _FIELD_ZH.get(f, f))
        self.templates = Jinja2Templates(env=env)
        self.skipped: list[str] = []
        self.decided: dict[str, dict[str, Any]] = {}

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context |= {"privileged": self.privileged, "csrf": csrf_token(self.token)}
        done = request.query_params.get("done")
        if done and done in self.decided:
            context["done"] = self.decided[done]
            try:  # the banner's audit row; a login that may not read the log still decides
                rows = recent_decisions(self.city, limit=1)
            except (AccessError, sa.exc.SQLAlchemyError):
                rows = []
            context["audit"] = rows[0] if rows else None
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def ordered(self) -> list[dict[str, Any]]:
        """The queue, most probable first, pairs skipped in this session last."""
        rows = queue(self.city, limit=500, privileged=self.privileged)
        for r in rows:
            r["status"] = self.decided.get(r["ref"], {}).get("decision") or (
                SKIP if r["ref"] in self.skipped else None
            )
        return sorted(rows, key=lambda r: r["status"] == SKIP)  # stable: by probability

    def next_page(self, ref: str) -> str:
        """Where to go after ``ref``: the first pair still open, else the queue."""
        open_pairs = [r for r in self.ordered() if r["status"] is None and r["ref"] != ref]
        return f"/pair/{open_pairs[0]['ref']}?done={ref}" if open_pairs else f"/?done={ref}"

    async def queue_page(self, request: Request) -> Response:
        try:
            rows = await run_in_threadpool(self.ordered)
        except (AccessError, ReviewError, LookupError) as exc:
            return self.page(request, "error.html", 403, message=str(exc))
        return await run_in_threadpool(self.page, request, "queue.html", rows=rows)

    async def pair_page(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        try:
            view = await run_in_threadpool(pair, self.city, ref, privileged=self.privileged)
        except (AccessError, ReviewError, LookupError) as exc:
            return self.page(request, "error.html", 404, message=str(exc))
        chart = waterfall(view.prior, view.weights, bands=view.bands)
        decided = self.decided.get(ref)
        return await run_in_threadpool(
            self.page, request, "pair.html", view=view, chart=chart, decided=decided
        )

    async def decide_page(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        form = await request.form()
        origin = request.headers.get("origin")
        expected = f"{request.url.scheme}://{request.url.netloc}"
        if not hmac.compare_digest(str(form.get("csrf", "")), csrf_token(self.token)) or (
            origin is not None and origin != expected
        ):
            return self.page(request, "error.html", 403, message="表单已过期：请重新打开页面")
        decision, note = str(form.get("decision", "")), str(form.get("note", "")).strip()
        if decision == SKIP:
            if ref not in self.skipped:
                self.skipped.append(ref)
        elif decision in DECISIONS:
            try:
                entity, left, right = await run_in_threadpool(
                    decide_pair, self.city, ref, decision, note=note or None
                )
            except (AccessError, ReviewError, LookupError) as exc:
                return self.page(request, "error.html", 403, message=str(exc))
            self.decided[ref] = {
                "decision": decision,
                "entity": entity,
                "left": left,
                "right": right,
                "note": note,
            }
        else:
            return self.page(request, "error.html", 400, message=f"unknown decision {decision!r}")
        return RedirectResponse(await run_in_threadpool(self.next_page, ref), 303)


def new_token() -> str:
    """A fresh secret for one ``govmdm review serve``."""
    return secrets.token_urlsafe(24)


def serve(app: Starlette, *, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` until interrupted."""
    import uvicorn

    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)
