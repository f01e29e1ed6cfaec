"""The runtime over real gRPC: errors, health, reflection, TLS, tasks across clients."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from manager.providerclient import ClientTLS, ProviderClient, RetryPolicy, raise_for_task
from providers.runtime import server as runtime_server
from tests.conftest import MiB
from tests.fakes.memory_provider import MemoryProvider
from tests.support import free_port
from tests.support.certs import CertAuthority
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

SERVICE = "virtrigaud.provider.v1.Provider"


@pytest.mark.parametrize("row", errors.ERROR_TABLE, ids=lambda r: r.error.__name__)
def test_every_error_kind_round_trips_through_grpc(
    row: errors.ErrorMapping, memory_driver: MemoryProvider, client: ProviderClient
) -> None:
    memory_driver.inject["describe_vm"] = row.error(f"boom {row.error.__name__}")
    with pytest.raises(errors.VirtrigaudError) as caught:
        client.describe_vm("vm-1")
    assert type(caught.value) is row.error
    assert caught.value.message == f"boom {row.error.__name__}"


@pytest.mark.parametrize("row", errors.ERROR_TABLE, ids=lambda r: r.error.__name__)
def test_generic_grpc_clients_see_the_table_status(
    row: errors.ErrorMapping,
    memory_driver: MemoryProvider,
    memory_server: runtime_server.RunningServer,
) -> None:
    memory_driver.inject["describe_vm"] = row.error("x")
    with grpc.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/DescribeVM",
            request_serializer=pb.DescribeVMRequest.SerializeToString,
            response_deserializer=pb.VM.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(pb.DescribeVMRequest(vm_id="vm-1"), timeout=5)
    assert caught.value.code() == row.status
    # A subclass without its own row maps through its parent's row.
    assert errors.to_grpc_status(errors.ValidationError("spec.x", "bad"))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_status_without_metadata_maps_through_the_table() -> None:
    class Bare(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.UNAVAILABLE

        def details(self) -> str:
            return "connection refused"

    rebuilt = errors.from_grpc_error(Bare())
    assert isinstance(rebuilt, errors.Unavailable)
    assert rebuilt.retryable


def test_crashing_driver_yields_internal_without_leaking_text(
    memory_driver: MemoryProvider, client: ProviderClient
) -> None:
    def crash(vm_id: str) -> pb.VM:
        raise RuntimeError("secretKey=abc123")

    memory_driver.describe_vm = crash  # type: ignore[method-assign]
    with pytest.raises(errors.InternalError) as caught:
        client.describe_vm("vm-1")
    assert "abc123" not in caught.value.message


def test_health_serving_then_not_serving_on_shutdown(memory_driver: MemoryProvider) -> None:
    running = runtime_server.start(memory_driver, "127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        running.health.enter_graceful_shutdown()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    running.stop(grace=1)


def test_reflection_lists_and_describes_the_contract(
    memory_server: runtime_server.RunningServer,
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{memory_server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
            ]
        )
        listed, described = list(stub.ServerReflectionInfo(requests, timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = described.file_descriptor_response.file_descriptor_proto
    assert any(b"ExportDisk" in blob for blob in files)


def _mtls_server(
    tmp_path: Path, driver: MemoryProvider
) -> tuple[CertAuthority, runtime_server.RunningServer]:
    ca = CertAuthority(tmp_path)
    server_pair = ca.issue("provider", server=True)
    tls = runtime_server.TLSFiles(server_pair.cert, server_pair.key, client_ca=ca.path)
    return ca, runtime_server.start(driver, "127.0.0.1:0", tls=tls)


def test_mtls_accepts_a_client_certificate_from_the_ca(
    tmp_path: Path, memory_driver: MemoryProvider
) -> None:
    ca, running = _mtls_server(tmp_path, memory_driver)
    client_pair = ca.issue("manager", server=False)
    tls = ClientTLS(ca=ca.path, cert=client_pair.cert, key=client_pair.key)
    with ProviderClient(f"localhost:{running.port}", tls=tls, timeout=5) as client:
        assert client.get_capabilities().provider_type == "memory"
        assert client.health()
    running.stop(grace=1)


def test_mtls_refuses_clients_without_a_trusted_certificate(
    tmp_path: Path, memory_driver: MemoryProvider
) -> None:
    ca, running = _mtls_server(tmp_path, memory_driver)
    (tmp_path / "other").mkdir()
    rogue = CertAuthority(tmp_path / "other", name="stranger-ca").issue("rogue", server=False)
    attempts = {
        "no client cert": ClientTLS(ca=ca.path),
        "cert from another CA": ClientTLS(ca=ca.path, cert=rogue.cert, key=rogue.key),
    }
    for label, tls in attempts.items():
        with (
            ProviderClient(
                f"localhost:{running.port}", tls=tls, timeout=3, retry=RetryPolicy(attempts=1)
            ) as client,
            pytest.raises(errors.Unavailable),
        ):
            client.get_capabilities()
            pytest.fail(f"{label}: the call was accepted")
    with (
        ProviderClient(
            f"127.0.0.1:{running.port}", timeout=3, retry=RetryPolicy(attempts=1)
        ) as plaintext,
        pytest.raises(errors.Unavailable),
    ):
        plaintext.get_capabilities()
    running.stop(grace=1)


def test_task_survives_the_client_that_started_it(
    tmp_path: Path, memory_driver: MemoryProvider, memory_server: runtime_server.RunningServer
) -> None:
    memory_driver.chunk_delay = 0.05
    vm = next(iter(memory_driver.vms.values()))
    target = tmp_path / "exports" / "vda.raw"
    request = pb.ExportDiskRequest(
        operation_id="uid-1/0/export/vda",
        vm_id=vm.id,
        disk_id="vda",
        destination=pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{target}"),
    )
    address = f"127.0.0.1:{memory_server.port}"
    first = ProviderClient(address, timeout=5)
    task = first.export_disk(request)
    first.close()
    with ProviderClient(address, timeout=5) as second:
        again = second.export_disk(request)
        assert again.id == task.id
        final = raise_for_task(second.wait_task(task.id, timeout=30))
    assert final.export_result.size_bytes == target.stat().st_size
    assert target.read_bytes() == Path(vm.disks[0].path).read_bytes()


def test_watch_task_stream_reports_increasing_progress(
    tmp_path: Path, memory_driver: MemoryProvider, client: ProviderClient
) -> None:
    resume = threading.Event()

    def pause_after_first_mib(done: int) -> None:
        if done == MiB:
            resume.wait(30)

    memory_driver.chunk_hook = pause_after_first_mib
    vm = next(iter(memory_driver.vms.values()))
    task = client.export_disk(
        pb.ExportDiskRequest(
            operation_id="watch-1",
            vm_id=vm.id,
            disk_id="vda",
            destination=pb.StorageLocation(
                backend=pb.STORAGE_BACKEND_NFS, url=str(tmp_path / "w.raw")
            ),
        )
    )
    updates = []
    for update in client.watch_task(task.id, timeout=30):
        updates.append(update)
        if 0 < update.bytes_done < update.bytes_total:
            resume.set()  # the paused transfer was seen mid-way: let it finish
    assert resume.is_set(), "no update was streamed while the transfer was paused mid-way"
    assert updates[-1].state == pb.TASK_STATE_SUCCEEDED
    done = [u.bytes_done for u in updates]
    assert done == sorted(done)
    assert updates[-1].bytes_done == vm.disks[0].virtual_size_bytes


def test_watch_and_get_of_an_unknown_task_are_not_found(client: ProviderClient) -> None:
    with pytest.raises(errors.NotFound):
        client.get_task("task-nope")
    with pytest.raises(errors.NotFound):
        list(client.watch_task("task-nope", timeout=5))
    with pytest.raises(errors.NotFound):
        client.cancel_task("task-nope")


def test_client_retries_until_the_server_appears(memory_driver: MemoryProvider) -> None:
    port = free_port()
    holder: list[runtime_server.RunningServer] = []
    starter = threading.Timer(
        0.5, lambda: holder.append(runtime_server.start(memory_driver, f"127.0.0.1:{port}"))
    )
    client = ProviderClient(
        f"127.0.0.1:{port}", timeout=2, retry=RetryPolicy(attempts=8, initial_backoff=0.2)
    )
    starter.start()
    try:
        assert client.get_capabilities().provider_type == "memory"
    finally:
        starter.join()
        client.close()
        for running in holder:
            running.stop(grace=1)
    assert holder, "the server never started, so the call cannot have succeeded"
