"""Several processes on one store file: optimistic locking and watches across them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory

REPO = Path(__file__).resolve().parents[3]

# Waits for the go file, then updates the object it was given (same resourceVersion in
# every process) and prints ok or conflict.
RACER = """
import json, sys, time
from pathlib import Path
from manager.store.sqlite import SQLiteStore
from virtrigaud import errors
path, go, endpoint = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
obj = json.loads(Path(sys.argv[4]).read_text())
store = SQLiteStore(path)
while not go.exists():
    time.sleep(0.001)
obj["spec"]["endpoint"] = endpoint
try:
    store.update(obj)
    print("ok")
except errors.Conflict:
    print("conflict")
store.close()
"""

WRITER = """
import sys
from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
store = SQLiteStore(sys.argv[1])
for index in range(5):
    store.create(factory.vm(f"from-child-{index}"))
store.close()
"""


def test_processes_racing_on_the_same_version_give_one_conflict(tmp_path: Path) -> None:
    path, go = tmp_path / "state.db", tmp_path / "go"
    with SQLiteStore(path) as store:
        created = store.create(factory.provider())
    given = tmp_path / "object.json"
    given.write_text(json.dumps(created))
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(path), str(go), f"qemu+tcp://h{i}/", str(given)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    time.sleep(0.5)  # let every racer open the store and wait (not an assertion)
    go.touch()
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["conflict", "conflict", "conflict", "ok"]
    with SQLiteStore(path) as store:
        stored = store.get("Provider", "default", "lv")
    winner = results.index("ok")
    assert stored["spec"]["endpoint"] == f"qemu+tcp://h{winner}/"
    assert stored["metadata"]["generation"] == 2


def test_watch_sees_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SQLiteStore(path) as store:
        stop = threading.Event()
        events = store.watch(("VirtualMachine",), stop)
        got: list[str] = []

        def consume() -> None:
            for event in events:
                got.append(f"{event.type} {event.key.name}")
                if len(got) == 5:
                    return

        thread = threading.Thread(target=consume)
        thread.start()
        child = subprocess.run(
            [sys.executable, "-c", WRITER, str(path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        thread.join(30)
        stop.set()
        assert got == [f"ADDED from-child-{i}" for i in range(5)]
