"""Console pages. Signed-in state is the same session token the API accepts (a cookie)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fleetkeep import __version__
from fleetkeep.admins import service as admins
from fleetkeep.admins.service import Principal
from fleetkeep.alerts.service import list_alerts
from fleetkeep.errors import RateLimited, Unauthorized
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import UserState
from fleetkeep.web.deps import SESSION_COOKIE, AppSettings, DbSession
from fleetkeep.web.pagination import decode_cursor, next_cursor

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
templates.env.globals["version"] = __version__
router = APIRouter(include_in_schema=False)


def _principal(request: Request, session: DbSession) -> Principal | None:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    try:
        return admins.authenticate(session, secret)
    except Unauthorized:
        return None


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, session: DbSession) -> Response:
    principal = _principal(request, session)
    if principal is None:
        return RedirectResponse("/sign-in", status_code=303)
    return templates.TemplateResponse(
        request,
        "dashboard.html",
        {
            "principal": principal,
            "users": identity.count_users_by_state(session),
            "profiles": len(identity.list_profiles(session)),
            "regions": len(identity.list_regions(session)),
            "alerts": list_alerts(session, limit=10),
        },
    )


@router.get("/users", response_class=HTMLResponse)
def users(
    request: Request,
    session: DbSession,
    q: str | None = None,
    state: str = "",
    cursor: str | None = None,
) -> Response:
    principal = _principal(request, session)
    if principal is None:
        return RedirectResponse("/sign-in", status_code=303)
    limit = 50
    # The filter form sends state="" for "any state".
    wanted = UserState(state) if state in {s.value for s in UserState} else None
    found = identity.list_users(
        session, after_id=decode_cursor(cursor), limit=limit, q=q, state=wanted
    )
    return templates.TemplateResponse(
        request,
        "users.html",
        {
            "principal": principal,
            "users": found,
            "q": q or "",
            "state": wanted.value if wanted else "",
            "states": [s.value for s in UserState],
            "next_cursor": next_cursor([u.id for u in found], limit),
        },
    )


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "sign_in.html", {"error": None})


@router.post("/sign-in", response_class=HTMLResponse)
def sign_in(
    request: Request,
    session: DbSession,
    settings: AppSettings,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    source = request.client.host if request.client else "unknown"
    try:
        _admin, token = admins.sign_in(
            session,
            email,
            password,
            source,
            max_failures=settings.login_max_failures,
            lockout_seconds=settings.login_lockout_seconds,
            session_hours=settings.session_hours,
        )
    except (Unauthorized, RateLimited) as exc:
        session.commit()
        return templates.TemplateResponse(
            request,
            "sign_in.html",
            {"error": exc.detail, "email": email},
            status_code=exc.status,
        )
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=settings.public_url.startswith("https"),
        max_age=settings.session_hours * 3600,
    )
    return response


@router.post("/sign-out")
def sign_out(request: Request, session: DbSession) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        admins.sign_out(session, secret)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
