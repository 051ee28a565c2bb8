from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.counting import VisitResult
from app.page import MAX_PREFIXES, render_visit_page
from harness.flask_app import make_config, migrated_app
from tests.app.helpers import database_totals, released_version, total_on_page, visits_on_page


def visit(client: FlaskClient, address: str = "203.0.113.7", **headers: str) -> str:
    response = client.get("/", environ_base={"REMOTE_ADDR": address}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data(as_text=True)


def test_page_counts_visits_per_visitor(client: FlaskClient, app: Flask) -> None:
    assert visits_on_page(visit(client)) == 1
    page = visit(client)
    assert visits_on_page(page) == 2
    assert total_on_page(page) == 1
    other = visit(client, "198.51.100.1")
    assert visits_on_page(other) == 1
    assert total_on_page(other) == 2
    assert database_totals(app) == {"visitors": 2, "visits": 3, "shard_visitors": 2, "shard_visits": 3}


def test_page_keeps_the_original_contract(client: FlaskClient) -> None:
    response = client.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"})
    html = response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert "You have visited this page" in html
    assert total_on_page(html) == 1
    # Said once: a tile, not a tile and a line repeating it.
    assert html.count("Total visitors") == 1
    assert 'Deployed by <a href="#" class="text-white">n/a</a>' in html
    assert f"v{released_version()}" in html
    assert "203.0.113.7" not in html
    assert "PostgreSQL" not in html


def test_footer_uses_user_name_and_url(database_url: str) -> None:
    app = migrated_app(make_config(database_url, USER_NAME="Ops <Team>", USER_URL="https://ops.example.org/"))
    html = visit(app.test_client())
    assert 'Deployed by <a href="https://ops.example.org/" class="text-white">Ops &lt;Team&gt;</a>' in html


@pytest.mark.parametrize("visits", [1, 2, 1234567])
def test_prerendered_visit_page_is_the_template_rendering(tmp_path: Path, visits: int) -> None:
    """The page a visit gets is exactly what Jinja renders, escaping included, under any URL prefix."""
    name, url = 'Ops <Team> & "Co"', "https://ops.example.org/?a=1&b=<2>"
    app = create_app(make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", USER_NAME=name, USER_URL=url))
    state = app.extensions["tally"]
    visit = VisitResult(visits, False, True, 89012, 345)
    for base_url in ("http://localhost/", "http://localhost/prefix/"):
        with app.test_request_context("/", base_url=base_url):
            fast = state.visit_page.render(visit)
            assert fast == render_visit_page(visit)
        assert f'href="{base_url.removeprefix("http://localhost")}static/cover.css"' in fast
    assert "Ops &lt;Team&gt; &amp; &#34;Co&#34;" in fast
    assert 'href="https://ops.example.org/?a=1&amp;b=&lt;2&gt;"' in fast
    assert visits_on_page(fast) == visits
    assert "\x00" not in fast


def test_prerendered_pages_kept_are_bounded(tmp_path: Path) -> None:
    """gunicorn takes SCRIPT_NAME from a forwarder's header: prefixes must not grow a worker's memory."""
    app = create_app(make_config(f"sqlite:///{tmp_path / 't.sqlite3'}"))
    page = app.extensions["tally"].visit_page
    visit = VisitResult(3, False, False, 4, 5)
    for number in range(MAX_PREFIXES + 5):
        with app.test_request_context("/", base_url=f"http://localhost/p{number}/"):
            assert f'href="/p{number}/static/cover.css"' in page.render(visit)
    assert len(page._skeletons) == MAX_PREFIXES


def test_equivalent_addresses_are_one_visitor(client: FlaskClient) -> None:
    visit(client, "1.2.3.4")
    assert visits_on_page(visit(client, "::ffff:1.2.3.4")) == 2
    assert visits_on_page(visit(client, "2001:db8::1")) == 1
    assert visits_on_page(visit(client, "2001:DB8:0::1")) == 2


def test_head_probes_static_and_other_endpoints_do_not_count(client: FlaskClient, app: Flask) -> None:
    assert client.head("/", environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code == 200
    probe = client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"}, headers={"User-Agent": "kube-probe/1.29"})
    assert probe.status_code == 200
    assert "not counted" in probe.get_data(as_text=True)
    for path in ("/version", "/healthz", "/readyz", "/api/stats", "/static/cover.css", "/nope"):
        client.get(path, environ_base={"REMOTE_ADDR": "1.2.3.4"})
    assert database_totals(app)["visits"] == 0


def test_a_user_agent_calling_itself_traefik_still_counts(client: FlaskClient, app: Flask) -> None:
    page = client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"}, headers={"User-Agent": "Traefik-bot"})
    assert visits_on_page(page.get_data(as_text=True)) == 1
    assert database_totals(app)["visits"] == 1


def test_version_reports_build_metadata(database_url: str) -> None:
    app = migrated_app(make_config(database_url, BUILD_NUMBER="57", GIT_COMMIT="abc123"))
    client = app.test_client()
    semver = released_version()
    assert client.get("/version").json == {
        "version": f"{semver}+build.57",
        "semver": semver,
        "build": "57",
        "commit": "abc123",
    }
    assert f"v{semver}+build.57" in visit(client)


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["status"] == "ready"


def test_readiness_fails_before_migrations(database_url: str) -> None:
    from app import create_app

    client = create_app(make_config(database_url)).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert client.get("/healthz").status_code == 200


def set_revision(app: Flask, revision: str) -> None:
    from sqlalchemy import text

    with app.extensions["tally"].engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_readiness_fails_when_schema_is_behind(client: FlaskClient, app: Flask) -> None:
    app.extensions["tally"] = dataclasses.replace(
        app.extensions["tally"], head_revision="0002_next", known_revisions=frozenset({"0001_baseline", "0002_next"})
    )
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "migrations pending"


def test_readiness_holds_when_schema_is_newer_than_this_build(client: FlaskClient, app: Flask) -> None:
    """A rolling deploy migrates first; old replicas must stay in the load balancer until replaced."""
    set_revision(app, "0002_from_a_newer_release")
    assert client.get("/readyz").status_code == 200


def test_a_draining_replica_is_unready_and_still_serves(database_url: str, tmp_path: Path) -> None:
    """scripts/deploy.sh drains a replica before stopping it: Traefik's check fails, visits still count."""
    drain_marker = tmp_path / "draining"
    client = migrated_app(make_config(database_url, DRAIN_MARKER=str(drain_marker))).test_client()
    assert client.get("/readyz").status_code == 200
    drain_marker.touch()
    response = client.get("/readyz")
    assert (response.status_code, response.json) == (503, {"status": "draining"})
    assert visits_on_page(visit(client)) == 1
    assert client.get("/healthz").status_code == 200


def test_stats_api(client: FlaskClient) -> None:
    for address in ("1.1.1.1", "1.1.1.1", "2.2.2.2"):
        visit(client, address)
    body = client.get("/api/stats").json
    assert body["total_visitors"] == 2
    assert body["total_visits"] == 3
    assert len(body["daily"]) == 30
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert body["daily"][-1] == {"day": today, "unique_visitors": 2}
    assert all(day["unique_visitors"] == 0 for day in body["daily"][:-1])


def test_unique_today_counts_first_visit_of_each_day(app: Flask) -> None:
    from app.counting import record_visit

    engine = app.extensions["tally"].engine
    monday, tuesday = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
    assert record_visit(engine, b"a" * 32, monday).is_new_today
    assert not record_visit(engine, b"a" * 32, monday).is_new_today
    second_day = record_visit(engine, b"a" * 32, tuesday)
    assert second_day.is_new_today
    assert not second_day.is_new_visitor
    assert second_day.visits == 3
    assert second_day.today_visitors == 1
    assert record_visit(engine, b"b" * 32, tuesday).today_visitors == 2


def test_forwarded_header_is_ignored_without_trusted_proxies(client: FlaskClient) -> None:
    visit(client, "10.0.0.1", **{"X-Forwarded-For": "1.1.1.1"})
    page = visit(client, "10.0.0.1", **{"X-Forwarded-For": "2.2.2.2"})
    assert visits_on_page(page) == 2
    assert total_on_page(page) == 1


def test_one_trusted_hop_uses_the_address_the_proxy_appended(database_url: str) -> None:
    app = migrated_app(make_config(database_url, TRUSTED_PROXY_HOPS="1"))
    client = app.test_client()
    # A client forging "1.1.1.1" in front of its real address gains nothing: the proxy appends the real one.
    visit(client, "172.18.0.2", **{"X-Forwarded-For": "1.1.1.1, 203.0.113.9"})
    page = visit(client, "172.18.0.2", **{"X-Forwarded-For": "9.9.9.9, 203.0.113.9"})
    assert visits_on_page(page) == 2
    assert total_on_page(page) == 1


@pytest.mark.parametrize("forwarded", ["n/a", "1.2.3.999", "<script>", "fe80::1%" + "z" * 90])
def test_malformed_forwarded_address_is_refused_without_counting(database_url: str, forwarded: str) -> None:
    app = migrated_app(make_config(database_url, TRUSTED_PROXY_HOPS="1"))
    client = app.test_client()
    response = client.get("/", environ_base={"REMOTE_ADDR": "172.18.0.2"}, headers={"X-Forwarded-For": forwarded})
    assert response.status_code == 400
    assert "<script>" not in response.get_data(as_text=True)
    assert database_totals(app)["visits"] == 0


def test_zone_id_address_is_counted_without_overflow(database_url: str) -> None:
    app = migrated_app(make_config(database_url, TRUSTED_PROXY_HOPS="1"))
    page = visit(app.test_client(), "172.18.0.2", **{"X-Forwarded-For": "fe80::1%eth0-with-a-rather-long-zone-name"})
    assert visits_on_page(page) == 1


def test_invalid_host_header_is_a_client_error(client: FlaskClient, app: Flask) -> None:
    response = client.get("/", headers={"Host": "a" * 70 + ".example.org"}, environ_base={"REMOTE_ADDR": "1.2.3.4"})
    assert response.status_code == 400
    assert response.mimetype == "text/plain"
    assert database_totals(app)["visits"] == 0


def test_unknown_paths_and_methods(client: FlaskClient) -> None:
    assert client.get("/wp-admin.php").status_code == 404
    assert client.post("/", environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code == 405
    assert client.get("/api/nope").json["error"] == "Not Found"


def test_method_not_allowed_names_the_allowed_methods(client: FlaskClient, app: Flask) -> None:
    # RFC 9110 15.5.6: a 405 carries Allow; the friendly error page must not drop it.
    for path in ("/", "/api/stats", "/stats"):
        response = client.post(path, environ_base={"REMOTE_ADDR": "1.2.3.4"})
        assert response.status_code == 405
        assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}, path
        assert response.headers["Cache-Control"] == "no-store"
    assert database_totals(app)["visits"] == 0


def test_oversized_body_is_refused(client: FlaskClient, app: Flask) -> None:
    for method in (client.post, client.get):
        response = method("/", data=b"x" * (64 * 1024), environ_base={"REMOTE_ADDR": "1.2.3.4"})
        assert response.status_code == 413
    assert database_totals(app)["visits"] == 0


def test_a_visit_with_a_body_is_refused_without_counting(client: FlaskClient, app: Flask) -> None:
    # The view never reads a body, so one it cannot decode would be counted and then fail in the proxy.
    chunked = client.get(
        "/", headers={"Transfer-Encoding": "chunked"}, data=b"zz\r\n", environ_base={"REMOTE_ADDR": "1.2.3.4"}
    )
    assert chunked.status_code == 400
    assert client.get("/", data=b"x", environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code == 400
    assert client.head("/", data=b"x").status_code == 400
    assert database_totals(app)["visits"] == 0
    assert client.get("/", headers={"Content-Length": "0"}, environ_base={"REMOTE_ADDR": "1.2.3.4"}).status_code == 200


def test_request_id_is_echoed_or_generated(client: FlaskClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id <x>"}).headers["X-Request-ID"]
    assert len(generated) == 32
    assert generated.isalnum()
