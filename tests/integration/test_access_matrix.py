"""Who may call what: every route of the app, by role and by tenant, over real HTTP.

`ROUTES` below declares, for every route the app serves, which roles may call it. From that one
table the tests check, for each route:

- no key, or an unknown key -> 401 problem;
- each role the route does not admit -> 403 problem;
- each role it admits, admin always included -> one of the row's `ok` statuses;
- another tenant's admin naming this tenant's object in the path -> 404 problem (and, for a
  list, none of this tenant's objects in the answer);
- and that the table and the app agree: a route the app serves but the table lacks fails
  `test_every_route_is_in_the_table`, as does a row for a route that no longer exists, and a
  row whose roles differ from what the route's key dependency admits.

Adding a route is one row:

    Route("POST", "/v1/review/tasks/{task_id}/release", REVIEWER, ok={200, 409}),

- `roles`: INGEST, REVIEWER, ADMIN, combined with `|` (admin is always admitted), or PUBLIC.
- `ok`: the statuses that show the call got past the key, role and tenant checks; an admin who
  holds no lease may rightly get 409, for example.
- `body`: a function of the tenant's objects returning the JSON body of a valid request.
- Path parameters are filled by name from the calling tenant's objects. A new name needs a
  maker in `OBJECT_MAKERS`: a function `(world, tenant) -> str` that creates the object over
  HTTP (or with factories) and returns its id; objects are made once per tenant, on first use.
- `cross_tenant=False` for a route whose path names no object of the tenant (creating a
  version under a new slug); a string marks a known gap: the 404 check then runs as a strict
  xfail with that reason, so it fails loudly the day the gap is closed.
- `lists="submission_id"` on a list route checks that another tenant's listing never
  contains this tenant's object of that name.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from moderation.config import Settings
from moderation.core.openapi import api_routes
from moderation.main import create_app
from tests.factories import TenantKeys, image_b64, make_tenant, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer

INGEST = frozenset({"ingest"})
REVIEWER = frozenset({"reviewer"})
ADMIN = frozenset({"admin"})
ANY_ROLE = INGEST | REVIEWER | ADMIN
PUBLIC = frozenset[str]()
ROLES = ("ingest", "reviewer", "admin")
PROBLEM = "application/problem+json"


def new_submission(_: TenantObjects) -> dict[str, Any]:
    return {"external_id": marker(), "text": "hello"}


def policy_draft(objects: TenantObjects) -> dict[str, Any]:
    return objects.world.policy_draft


def new_backtest(objects: TenantObjects) -> dict[str, Any]:
    """A backtest of the active version over the tenant's decided submission (made if need be)."""
    objects["submission_id"]
    return {"policy": "default", "draft_version": 1, "sample": {"limit": 5}}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    roles: frozenset[str]
    ok: frozenset[int] | set[int] = frozenset({200})
    body: Callable[[TenantObjects], dict[str, Any]] | None = None
    cross_tenant: bool | str = True
    lists: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES = [
    Route("GET", "/healthz", PUBLIC),
    Route("GET", "/readyz", PUBLIC),
    Route("GET", "/metrics", PUBLIC),
    Route("POST", "/v1/submissions", INGEST, ok={202}, body=new_submission),
    Route("GET", "/v1/submissions", INGEST | REVIEWER, lists="submission_id"),
    Route("GET", "/v1/submissions/{submission_id}", INGEST | REVIEWER),
    Route("GET", "/v1/submissions/{submission_id}/images/{position}", REVIEWER),
    # Frame 0 of a still is the image itself.
    Route("GET", "/v1/submissions/{submission_id}/images/{position}/frames/{frame}", REVIEWER),
    Route("GET", "/v1/submissions/{submission_id}/audit", REVIEWER),
    Route("GET", "/v1/policies", ANY_ROLE, lists="slug"),
    Route("GET", "/v1/policies/{slug}", ANY_ROLE),
    Route("GET", "/v1/policies/{slug}/versions/{version}", ANY_ROLE),
    # A slug the caller has not used yet starts a policy of its own: no other tenant's object.
    Route("POST", "/v1/policies/{slug}/versions", ADMIN, {201}, policy_draft, cross_tenant=False),
    Route("POST", "/v1/policies/{slug}/versions/{version}/activate", ADMIN),
    # 409 once the version is active: it cannot shadow itself.
    Route("POST", "/v1/policies/{slug}/versions/{version}/shadow", ADMIN, ok={200, 409}),
    Route("DELETE", "/v1/policies/{slug}/versions/{version}/shadow", ADMIN),
    Route("GET", "/v1/review/queue", REVIEWER, cross_tenant=False, lists="task_id"),
    # Claims appeals only, so it never takes the task the listing check looks for.
    Route(
        "POST", "/v1/review/claim", REVIEWER, cross_tenant=False,
        body=lambda _: {"limit": 1, "kind": "appeal"},
    ),
    Route("GET", "/v1/review/tasks/{task_id}", REVIEWER),
    Route("POST", "/v1/review/tasks/{task_id}/renew", REVIEWER, ok={200, 409}, body=lambda _: {}),
    Route("POST", "/v1/review/tasks/{task_id}/release", REVIEWER, ok={200, 409}),
    Route(
        "POST", "/v1/review/tasks/{task_id}/escalate", REVIEWER, ok={201, 409},
        body=lambda _: {"notes": "needs an admin"},
    ),
    Route(
        "POST", "/v1/review/tasks/{task_id}/decision", REVIEWER, ok={200, 409},
        body=lambda _: {"action": "allow", "categories": []},
    ),
    Route("GET", "/v1/webhooks/deliveries", ADMIN, cross_tenant=False, lists="delivery_id"),
    Route("GET", "/v1/webhooks/endpoints", ADMIN, cross_tenant=False),
    Route("GET", "/v1/reports/agreement", ADMIN, cross_tenant=False),
    Route("POST", "/v1/webhooks/deliveries/{delivery_id}/redeliver", ADMIN, ok={202, 409}),
    Route(
        "POST", "/v1/submissions/{submission_id}/appeals", INGEST, ok={201, 409},
        body=lambda _: {"reason": "this is my own artwork"},
    ),
    # The body names the caller's own policy by slug: no other tenant's object in the path.
    Route("POST", "/v1/backtests", ADMIN, ok={202}, body=new_backtest, cross_tenant=False),
    Route("GET", "/v1/backtests", ADMIN, cross_tenant=False, lists="backtest_id"),
    Route("GET", "/v1/backtests/{backtest_id}", ADMIN),
]  # fmt: skip


@dataclass
class World:
    """The running stack and what the makers need to create objects in it."""

    http: httpx.Client
    fake_vlm: FakeVLMServer
    policy_draft: dict[str, Any]


def make_submission(world: World, tenant: TenantKeys) -> str:
    """A submission the worker has finished with, so its normalized image exists."""
    case = marker()
    world.fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    accepted = world.http.post(
        "/v1/submissions",
        json={"external_id": case, "text": f"hi {case}", "images": [{"data": image_b64()}]},
        headers=tenant.headers("ingest"),
    )
    assert accepted.status_code == 202, accepted.text
    submission_id: str = accepted.json()["id"]
    wait_for_outcome(world.http, submission_id, tenant.headers("ingest"))
    return submission_id


def make_policy(world: World, tenant: TenantKeys) -> str:
    slug = f"matrix-{marker()}"
    created = world.http.post(
        f"/v1/policies/{slug}/versions", json=world.policy_draft, headers=tenant.headers("admin")
    )
    assert created.status_code == 201, created.text
    return slug


def make_review_task(world: World, tenant: TenantKeys) -> str:
    """A submission the model was unsure about: it waits in the review queue."""
    case = marker()
    world.fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 2, 0.5))])
    accepted = world.http.post(
        "/v1/submissions",
        json={"external_id": case, "text": f"unsure {case}"},
        headers=tenant.headers("ingest"),
    )
    assert accepted.status_code == 202, accepted.text
    submission_id = accepted.json()["id"]
    outcome = wait_for_outcome(world.http, submission_id, tenant.headers("ingest"))
    assert outcome["status"] == "in_review", outcome
    queue = world.http.get(
        "/v1/review/queue", params={"limit": 100}, headers=tenant.headers("reviewer")
    )
    assert queue.status_code == 200, queue.text
    [task] = [t for t in queue.json()["items"] if t["submission"]["id"] == submission_id]
    return str(task["id"])


def make_delivery(world: World, tenant: TenantKeys) -> str:
    """A callback delivery: a decided submission that named a callback URL has one."""
    case = marker()
    world.fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    receiver = os.environ["MODERATION_CALLBACK_ALLOW_HOSTS"].split(",")[0]
    accepted = world.http.post(
        "/v1/submissions",
        json={"external_id": case, "text": case, "callback_url": f"http://{receiver}/matrix"},
        headers=tenant.headers("ingest"),
    )
    assert accepted.status_code == 202, accepted.text
    submission_id = accepted.json()["id"]
    wait_for_outcome(world.http, submission_id, tenant.headers("ingest"))
    deliveries = world.http.get(
        "/v1/webhooks/deliveries",
        params={"submission": submission_id},
        headers=tenant.headers("admin"),
    )
    assert deliveries.status_code == 200, deliveries.text
    return str(deliveries.json()["items"][0]["id"])


def make_backtest(world: World, tenant: TenantKeys) -> str:
    """A backtest over a decided submission of the tenant."""
    make_submission(world, tenant)
    started = world.http.post(
        "/v1/backtests",
        json={"policy": "default", "draft_version": 1, "sample": {"limit": 5}},
        headers=tenant.headers("admin"),
    )
    assert started.status_code == 202, started.text
    return str(started.json()["id"])


OBJECT_MAKERS: dict[str, Callable[[World, TenantKeys], str]] = {
    "backtest_id": make_backtest,
    "delivery_id": make_delivery,
    "submission_id": make_submission,
    "task_id": make_review_task,
    "position": lambda world, tenant: "0",
    "frame": lambda world, tenant: "0",
    "slug": make_policy,
    # The first version of the tenant's policy `slug`.
    "version": lambda world, tenant: "1",
}


@dataclass
class TenantObjects:
    """One tenant's objects by path-parameter name, made on first use (see OBJECT_MAKERS)."""

    world: World
    tenant: TenantKeys
    made: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        if name not in self.made:
            maker = OBJECT_MAKERS.get(name)
            if maker is None:
                raise KeyError(f"no maker for path parameter {name!r}: add one to OBJECT_MAKERS")
            self.made[name] = maker(self.world, self.tenant)
        return self.made[name]


@dataclass
class Tenants:
    home: TenantObjects
    other: TenantObjects


@pytest.fixture(scope="module")
def http(api_url: str, worker: subprocess.Popen[bytes]) -> Iterator[httpx.Client]:
    assert worker.poll() is None, "the worker process died"
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def tenants(http: httpx.Client, fake_vlm: FakeVLMServer, migrated: str) -> Tenants:
    shipped = http.get("/v1/policies/default/versions/1", headers=make_tenant(migrated).headers())
    assert shipped.status_code == 200, shipped.text
    draft = {k: v for k, v in shipped.json()["document"].items() if k not in ("slug", "version")}
    world = World(http=http, fake_vlm=fake_vlm, policy_draft=draft)
    return Tenants(
        home=TenantObjects(world, make_tenant(migrated, "home")),
        other=TenantObjects(world, make_tenant(migrated, "other")),
    )


def call(
    route: Route, objects: TenantObjects, headers: dict[str, str], owner: TenantObjects
) -> httpx.Response:
    """Call `route` with `headers`, naming `owner`'s objects in the path and body."""
    path = route.path.format_map(owner)
    body = route.body(owner) if route.body else None
    return objects.world.http.request(route.method, path, json=body, headers=headers)


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == status


def param(route: Route, *extra: str, marks: Any = ()) -> Any:
    return pytest.param(route, *extra, id=" ".join([str(route), *extra]), marks=marks)


SECURED = [route for route in ROUTES if route.roles]


def test_every_route_is_in_the_table():
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1:1/none"))
    served = {
        (method, route.path): route.roles
        for route in api_routes(app.routes)
        for method in route.methods
    }
    table = {route.key: route for route in ROUTES}
    assert len(table) == len(ROUTES), "a route appears twice in the table"
    missing = sorted(set(served) - set(table))
    stale = sorted(set(table) - set(served))
    assert not missing, f"routes the app serves but ROUTES lacks (add a row): {missing}"
    assert not stale, f"rows for routes the app no longer serves: {stale}"
    for key, roles in served.items():
        declared = table[key].roles
        if roles is None:
            assert declared == PUBLIC, f"{key} needs no key, the table says {sorted(declared)}"
        else:
            assert declared | ADMIN == roles | ADMIN, (key, sorted(declared), sorted(roles))


@pytest.mark.parametrize("route", [param(route) for route in SECURED])
def test_no_key_or_an_unknown_key_is_401(route: Route, tenants: Tenants):
    for headers in ({}, {"Authorization": "Bearer mk_not-a-key"}):
        response = call(route, tenants.home, headers, tenants.home)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("route", "role"),
    [param(route, role) for route in SECURED for role in ROLES if role not in route.roles | ADMIN],
)
def test_a_role_the_route_does_not_admit_is_403(route: Route, role: str, tenants: Tenants):
    response = call(route, tenants.home, tenants.home.tenant.headers(role), tenants.home)
    assert_problem(response, 403)


@pytest.mark.parametrize(
    ("route", "role"),
    [param(route, role) for route in SECURED for role in ROLES if role in route.roles | ADMIN],
)
def test_every_admitted_role_gets_through(route: Route, role: str, tenants: Tenants):
    response = call(route, tenants.home, tenants.home.tenant.headers(role), tenants.home)
    assert response.status_code in route.ok, response.text


@pytest.mark.parametrize("route", [param(route) for route in ROUTES if not route.roles])
def test_public_routes_need_no_key(route: Route, tenants: Tenants):
    response = call(route, tenants.home, {}, tenants.home)
    assert response.status_code in route.ok, response.text


def cross_tenant_params() -> list[Any]:
    params = []
    for route in SECURED:
        if "{" not in route.path or route.cross_tenant is False:
            continue
        marks = ()
        if isinstance(route.cross_tenant, str):
            marks = pytest.mark.xfail(reason=route.cross_tenant, strict=True)
        params.append(param(route, marks=marks))
    return params


@pytest.mark.parametrize("route", cross_tenant_params())
def test_another_tenants_object_is_404(route: Route, tenants: Tenants):
    # The other tenant's admin key: it passes every role check, so only the tenant check is left.
    response = call(route, tenants.other, tenants.other.tenant.headers("admin"), tenants.home)
    assert_problem(response, 404)


def listing_params() -> list[Any]:
    params = []
    for route in SECURED:
        if route.lists is None:
            continue
        marks = ()
        if isinstance(route.cross_tenant, str):
            marks = pytest.mark.xfail(reason=route.cross_tenant, strict=True)
        params.append(param(route, marks=marks))
    return params


@pytest.mark.parametrize("route", listing_params())
def test_another_tenants_list_never_shows_this_tenants_objects(route: Route, tenants: Tenants):
    assert route.lists is not None
    mine = tenants.home[route.lists]
    own = call(route, tenants.home, tenants.home.tenant.headers("admin"), tenants.home)
    assert own.status_code == 200 and mine in own.text, "the owner's own listing shows it"
    theirs = call(route, tenants.other, tenants.other.tenant.headers("admin"), tenants.other)
    assert theirs.status_code == 200, theirs.text
    assert mine not in theirs.text
