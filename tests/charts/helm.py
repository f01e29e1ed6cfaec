"""``helm template`` for the tests: the chart-render stand-in (render/main.go).

``chart_render()`` builds it once per machine (tests/charts/build-renderer.sh, cached in
.cache/chart-render) and returns its path; ``template()`` renders a chart with values
laid over its values.yaml and returns the parsed documents.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "virtrigaud"
BUILD = Path(__file__).resolve().parent / "build-renderer.sh"


class RenderError(Exception):
    """The renderer refused the chart (a template error, ``fail`` or ``required``)."""


@dataclass(frozen=True)
class Rendered:
    text: str
    documents: list[dict[str, Any]]

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [
            d
            for d in self.documents
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
        ]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


@functools.cache
def chart_render() -> Path:
    done = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building chart-render failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def template(
    chart: Path = CHART,
    values: dict[str, Any] | None = None,
    *,
    name: str = "vr",
    namespace: str = "virtrigaud-system",
    include_crds: bool = False,
) -> Rendered:
    cmd = [str(chart_render()), "--name", name, "--namespace", namespace]
    if include_crds:
        cmd.append("--include-crds")
    with tempfile.TemporaryDirectory() as tmp:
        if values is not None:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["-f", str(path)]
        done = subprocess.run([*cmd, str(chart)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RenderError(done.stderr.strip())
    documents = [d for d in yaml.safe_load_all(done.stdout) if d is not None]
    for document in documents:
        assert isinstance(document, dict), f"a rendered document is not a mapping: {document!r}"
    return Rendered(done.stdout, documents)
