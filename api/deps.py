"""Request dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.state import AppState


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.kb
    return state


StateDep = Annotated[AppState, Depends(get_state)]
