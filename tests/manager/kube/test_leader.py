"""Lease-based leader election against the emulator (real HTTP, official client)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from manager.kube.leader import LeaderElector, LeaseConfig
from manager.kube.rest import Rest
from tests.kubeapi.fixtures import api_client, running
from tests.kubeapi.server import KubeAPIServer
from virtrigaud import errors


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    with running() as started:
        yield started


def _elector(server: KubeAPIServer, identity: str, **timing: float) -> LeaderElector:
    cfg = LeaseConfig(
        "default",
        "virtrigaud-leader",
        identity,
        lease_duration=timing.get("lease_duration", 2.0),
        renew_deadline=timing.get("renew_deadline", 1.5),
        retry_period=timing.get("retry_period", 0.1),
    )
    return LeaderElector(Rest(api_client(server)), cfg)


def _lease(server: KubeAPIServer) -> client.V1Lease:
    return client.CoordinationV1Api(api_client(server)).read_namespaced_lease(
        "virtrigaud-leader", "default"
    )


def test_first_candidate_creates_the_lease_the_second_waits(server: KubeAPIServer) -> None:
    a, b = _elector(server, "a"), _elector(server, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # renew
    lease = _lease(server)
    assert lease.spec.holder_identity == "a" and lease.spec.lease_transitions == 0
    assert lease.spec.lease_duration_seconds == 2
    assert b.holder == "a"


def test_racing_candidates_on_an_expired_lease_give_one_winner(server: KubeAPIServer) -> None:
    crashed = _elector(server, "crashed")
    assert crashed.try_acquire_or_renew()
    racers = [_elector(server, f"r{i}") for i in range(6)]
    for racer in racers:
        assert not racer.try_acquire_or_renew()  # observed now, held
    clock = [1000.0]
    for racer in racers:
        racer.clock = lambda: clock[0]
        racer._observed_at = 0.0  # last saw the record change long ago: expired
    barrier = threading.Barrier(len(racers))
    won: list[str] = []

    def race(elector: LeaderElector) -> None:
        barrier.wait()
        if elector.try_acquire_or_renew():
            won.append(elector.config.identity)

    threads = [threading.Thread(target=race, args=(r,)) for r in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1
    lease = _lease(server)
    assert lease.spec.holder_identity == won[0] and lease.spec.lease_transitions == 1


def test_standby_takes_over_when_the_leader_stops_renewing(server: KubeAPIServer) -> None:
    dead = _elector(server, "dead")
    assert dead.try_acquire_or_renew()  # ... and then the process dies
    standby = _elector(server, "standby")
    stop = threading.Event()
    started = threading.Event()
    thread = threading.Thread(
        target=standby.run, args=(stop, started.set, lambda: None), daemon=True
    )
    thread.start()
    assert started.wait(30)
    lease = _lease(server)
    assert lease.spec.holder_identity == "standby" and lease.spec.lease_transitions == 1
    stop.set()
    thread.join(10)
    assert _lease(server).spec.holder_identity == ""  # released on a clean stop


def test_two_candidates_never_lead_at_once_and_release_hands_over(
    server: KubeAPIServer,
) -> None:
    active: list[str] = []
    overlaps: list[list[str]] = []
    lock = threading.Lock()
    led: list[str] = []

    def callbacks(name: str) -> tuple[object, object]:
        def started() -> None:
            with lock:
                active.append(name)
                led.append(name)
                if len(active) > 1:
                    overlaps.append(list(active))

        def stopped() -> None:
            with lock:
                active.remove(name)

        return started, stopped

    stops = {name: threading.Event() for name in ("one", "two")}
    threads = {}
    for name, stop in stops.items():
        elector = _elector(server, name)
        on_start, on_stop = callbacks(name)
        threads[name] = threading.Thread(
            target=elector.run, args=(stop, on_start, on_stop), daemon=True
        )
        threads[name].start()
    deadline = threading.Event()
    while not led and not deadline.wait(0.05):
        pass
    first = led[0]
    stops[first].set()  # the leader shuts down cleanly: releases the Lease
    threads[first].join(10)
    other = "two" if first == "one" else "one"
    while len(led) < 2 and not deadline.wait(0.05):
        pass
    assert led == [first, other]
    stops[other].set()
    threads[other].join(10)
    assert overlaps == []


def test_a_leader_that_sees_another_holder_stops_leading(server: KubeAPIServer) -> None:
    leader = _elector(server, "leader")
    stop = threading.Event()
    started, stopped = threading.Event(), threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(
        target=lambda: outcome.append(leader.run(stop, started.set, stopped.set)), daemon=True
    )
    thread.start()
    assert started.wait(30)
    coordination = client.CoordinationV1Api(api_client(server))
    lease = coordination.read_namespaced_lease("virtrigaud-leader", "default")
    lease.spec.holder_identity = "usurper"
    lease.spec.lease_duration_seconds = 3600
    coordination.replace_namespaced_lease("virtrigaud-leader", "default", lease)
    assert stopped.wait(30)
    thread.join(10)
    assert outcome == [False] and not leader.leading.is_set()
    assert _lease(server).spec.holder_identity == "usurper"  # not released: not ours


def test_lease_config_is_checked() -> None:
    with pytest.raises(errors.InvalidArgument, match="renew deadline"):
        LeaseConfig("default", "l", "me", lease_duration=5, renew_deadline=10, retry_period=2)
    with pytest.raises(errors.InvalidArgument, match="identity"):
        LeaseConfig("default", "l", "")
