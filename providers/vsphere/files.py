"""Datastore file management through the SOAP API (FileManager).

Folders are made with ``MakeDirectory`` and files removed with
``DeleteDatastoreFile_Task`` (waited for by ``tasks.wait``); both take the datacenter
the datastore belongs to. Deleting a file that is already gone is success, so
cleanup can run again after an interrupted attempt.
"""

from __future__ import annotations

import contextlib
from typing import Any

from providers.runtime.tasks import Progress
from providers.vsphere import tasks
from providers.vsphere.client import VSphereClient
from providers.vsphere.dspath import DsPath
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")


def make_directory(client: VSphereClient, datacenter: Any, folder: DsPath) -> None:
    """Create ``folder`` (and its parents); an existing folder is fine."""
    with contextlib.suppress(errors.AlreadyExists):
        client.call(
            lambda c: c.fileManager.MakeDirectory(str(folder), datacenter, True),
            f"creating folder {folder}",
        )


def delete_file(
    client: VSphereClient, datacenter: Any, path: DsPath, ctx: Progress | None = None
) -> bool:
    """Delete one datastore file; False when it did not exist."""
    what = f"deleting {path}"
    try:
        task = client.call(
            lambda c: c.fileManager.DeleteDatastoreFile_Task(str(path), datacenter), what
        )
        tasks.wait(client, task, what, ctx=ctx)
    except errors.NotFound:
        return False
    return True


def delete_quietly(client: VSphereClient, datacenter: Any, path: DsPath, why: str) -> None:
    """Best-effort cleanup (a failure is logged, never raised over the real error)."""
    try:
        delete_file(client, datacenter, path)
    except errors.VirtrigaudError as exc:
        log.warning("datastore_cleanup_failed", path=str(path), reason=why, error=exc.message)
