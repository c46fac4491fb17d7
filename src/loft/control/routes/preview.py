"""``POST /v1/workspaces/{name}/preview``: where a port of the workspace is previewed,
and a login link that gives a browser the preview's cookie (a ticket signed for that
one host, valid once within a minute, naming the caller's token: revoking the token
ends the cookie)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from loft.api import CreatePreview, PreviewAccess
from loft.control.accounts import parse_token
from loft.control.deps import LOCAL_ADMIN, Caller, OwnerQuery, State, owned
from loft.control.errors import Unimplemented
from loft.control.preview.grants import TICKET_TTL, Grant, GrantSigner
from loft.control.preview.host import preview_label
from loft.control.routes import ERRORS, errors
from loft.control.routes.workspaces import NamePath

__all__ = ["router"]

router = APIRouter(tags=["preview"], responses=ERRORS)


@router.post("/v1/workspaces/{name}/preview", responses=errors(501))
async def open_preview(
    name: NamePath,
    body: CreatePreview,
    request: Request,
    caller: Caller,
    state: State,
    owner: OwnerQuery = None,
) -> PreviewAccess:
    """The preview address of a port, and a login URL for a browser (nothing is woken:
    the first request to the preview does that)."""
    rec = await owned(state, caller, name, owner)
    site = state.preview
    if site is None:
        raise Unimplemented(
            "this control plane serves no preview origin", hint="serve it with --preview-listen"
        )
    token_id = ""
    if not request.scope.get(LOCAL_ADMIN):
        _, _, bearer = request.headers.get("authorization", "").partition(" ")
        parsed = parse_token(bearer.strip())
        token_id = parsed[0] if parsed else ""
    now = time.time()
    signer = GrantSigner(state.accounts.preview_key)
    label = preview_label(body.port, rec.id)
    ticket = signer.sign(Grant("ticket", label, caller.id, token_id, int(now + TICKET_TTL)))
    return PreviewAccess(
        url=site.url(body.port, rec.id),
        login_url=site.login_url(body.port, rec.id, ticket),
        expires_at=now + site.cookie_ttl,
        public=rec.preview_public,
    )
