"""bench/profile_load.py's arithmetic, without a load (that is `python -m bench.profile_load`)."""

from __future__ import annotations

from bench.profile_load import per_request, samples_by_area

# py-spy --format raw: one stack per line, outermost frame first, the sample count last.
RAW = """\
_worker (concurrent/futures/thread.py:83);ThreadWorker.handle (gunicorn/workers/gthread.py:553) 40
_worker (concurrent/futures/thread.py:83);Flask.wsgi_app (flask/app.py:1511);index (app/views.py:59) 7
_worker (concurrent/futures/thread.py:83);index (app/views.py:59);Request.__init__ (werkzeug/wrappers/request.py:125) 5
_worker (concurrent/futures/thread.py:83);index (app/views.py:61);Request.__init__ (werkzeug/wrappers/request.py:130) 1
_worker (concurrent/futures/thread.py:83);Flask.wsgi_app (flask/app.py:1511);select (selectors.py:468) 3
truncated line without a count
"""


def test_samples_are_counted_once_each_in_the_area_of_their_innermost_frame() -> None:
    areas = samples_by_area(RAW.splitlines())
    # app/views.py must not fall into Flask's area because flask/app.py is on the same stack.
    assert areas == {"gunicorn": 40, "app code": 7, "Werkzeug": 6, "other (stdlib, C calls)": 3}


def test_cpu_and_context_switches_are_divided_by_the_requests_served() -> None:
    before = {"user": 10.0, "system": 1.0, "voluntary": 100.0, "involuntary": 50.0}
    after = {"user": 10.8, "system": 1.2, "voluntary": 2100.0, "involuntary": 1050.0}
    assert per_request(before, after, 1000) == {"cpu_us": 1000, "system_us": 200, "context_switches": 3.0}
