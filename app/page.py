"""The visit page without a template engine on the hot path.

Only a visit's figures change from one visit to the next. Jinja renders ``index.html`` once per worker
(and URL prefix) with a marker in place of each figure, autoescaping USER_NAME and USER_URL as in any
other rendering; a visit then joins the fixed pieces with its figures, which are integers and a fixed
word, so nothing a visit adds needs escaping. Rendering the template per visit was ~25 % of a visit's
CPU in the app process under cProfile (docs/capacity.md, "One visit, profiled").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import render_template, request

from .counting import VisitResult

# NUL cannot occur in the template, in an environment variable (USER_NAME, USER_URL) or in a version.
_MARK = "\x00"
_FIGURES = ("visits", "unit", "total_visitors", "today_visitors")
# gunicorn takes SCRIPT_NAME from a trusted forwarder's request header, so the prefixes a worker sees are
# not ours to bound: past a few, a page is rendered for its request and not kept.
MAX_PREFIXES = 8


@dataclass(frozen=True)
class _Markers:
    """Stands in for a VisitResult while the page is rendered once."""

    visits: str = f"{_MARK}visits{_MARK}"
    total_visitors: str = f"{_MARK}total_visitors{_MARK}"
    today_visitors: str = f"{_MARK}today_visitors{_MARK}"


def visits_unit(visits: int) -> str:
    return "time" if visits == 1 else "times"


def render_visit_page(visit: VisitResult | _Markers | None) -> str:
    """The page through Jinja: for health probes (no visit) and to make the skeleton."""
    unit = visits_unit(visit.visits) if isinstance(visit, VisitResult) else f"{_MARK}unit{_MARK}"
    return render_template("index.html", visit=visit, visits_unit=unit)


@dataclass
class VisitPage:
    # script_root -> literal pieces with the figures' names between them (literal, name, literal, ...).
    _skeletons: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _skeleton(self) -> tuple[str, ...]:
        # url_for() in the template depends on the request's script root (a proxy may mount the app
        # under a prefix); everything else on the page is fixed for the life of the app.
        root = request.script_root
        skeleton = self._skeletons.get(root)
        if skeleton is None:
            html = render_visit_page(_Markers())
            skeleton = tuple(html.split(_MARK))
            names = skeleton[1::2]
            if sorted(names) != sorted(_FIGURES):
                raise RuntimeError(f"index.html must show each visit figure once, found {names}")
            with self._lock:
                if len(self._skeletons) < MAX_PREFIXES:
                    self._skeletons[root] = skeleton
        return skeleton

    def render(self, visit: VisitResult) -> str:
        figures = {
            "visits": str(visit.visits),
            "unit": visits_unit(visit.visits),
            "total_visitors": str(visit.total_visitors),
            "today_visitors": str(visit.today_visitors),
        }
        pieces = self._skeleton()
        return "".join([piece if index % 2 == 0 else figures[piece] for index, piece in enumerate(pieces)])
