"""The dashboard page: one HTML file with its CSS and JS inlined. Served at ``/`` by the worker with no data
(it fetches the API), and written by ``npspulse replay --report`` with the replay's data embedded as JSON."""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib import resources
from typing import Any

import orjson

DATA_MARK, CSS_MARK, JS_MARK, TITLE_MARK = "{{data}}", "{{css}}", "{{js}}", "{{title}}"


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element: no ``<`` can close it."""
    return orjson.dumps(data).decode().replace("<", "\\u003c")


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_page(data: Any = None, title: str = "npspulse") -> str:
    """The page; ``data`` None makes the live page (polls the API), else a static page of that data."""
    page = _asset("page.html")
    for mark, value in ((CSS_MARK, _asset("dashboard.css")), (JS_MARK, _asset("dashboard.js")),
                        (TITLE_MARK, _escape_text(title)), (DATA_MARK, embed_json(data))):
        page = page.replace(mark, value)
    return page


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def content_security_policy() -> str:
    """The live page's policy: only its own inline script and style run, fetches go to this server only."""
    return (f"default-src 'none'; script-src {_sha256(_asset('dashboard.js'))}; "
            f"style-src {_sha256(_asset('dashboard.css'))}; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
