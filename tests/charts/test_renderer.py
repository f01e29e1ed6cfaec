"""chart-render behaves like ``helm template`` where the chart relies on it.

Each expectation below is Helm's documented behaviour (values coalescing, missing
values rendering empty, include/tpl/required/fail, toYaml key order and quoting,
partials and empty files not output, CRDs unrendered); the chart tests can only trust
the renderer as far as these hold.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from tests.charts.helm import RenderError, template

CHART_YAML = "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: 4.5.6\n"
VALUES = """
name: demo
replicas: 3
ratio: 0.5
enabled: false
labels: {b: "2", a: "1"}
nested: {keep: x, drop: y, inner: {one: 1, two: 2}}
list: [a, b]
empty: ""
"""
HELPERS = '{{- define "demo.full" -}}{{ .Release.Name }}-{{ .Values.name }}{{- end -}}\n'
MAIN = """\
name: {{ include "demo.full" . }}
replicas: {{ .Values.replicas }}
ratio: {{ .Values.ratio }}
quoted: {{ .Values.name | quote }}
fallback: {{ .Values.missing | default "dflt" }}
emptyDefault: {{ .Values.empty | default "was-empty" }}
missing: [{{ .Values.missing }}]
missingNested: [{{ .Values.nested.nothing }}]
upper: {{ upper .Values.name }}
labels:
  {{- toYaml .Values.labels | nindent 2 }}
nested:
  {{- toYaml .Values.nested | nindent 2 }}
list: {{ toJson .Values.list }}
chart: {{ .Chart.Name }}-{{ .Chart.Version }}-{{ .Chart.AppVersion }}
ns: {{ .Release.Namespace }}
service: {{ .Release.Service }}
template: {{ .Template.Name }}
tpl: {{ tpl "{{ .Values.name }}-x" . }}
{{- if not .Values.enabled }}
disabled: true
{{- end }}
trunc: {{ printf "%s" "abcdefghij" | trunc 4 }}
b64: {{ "hi" | b64enc }}
int: {{ add .Values.replicas 1 }}
{{- range $i, $v := .Values.list }}
item{{ $i }}: {{ $v }}
{{- end }}
"""
EXPECTED = """\
name: rel-demo
replicas: 3
ratio: 0.5
quoted: "demo"
fallback: dflt
emptyDefault: was-empty
missing: []
missingNested: []
upper: DEMO
labels:
  a: "1"
  b: "2"
nested:
  added: z
  inner:
    one: 1
    two: 22
  keep: x
list: ["c"]
chart: demo-1.2.3-4.5.6
ns: space
service: Helm
template: demo/templates/main.yaml
tpl: demo-x
disabled: true
trunc: abcd
b64: aGk=
int: 4
item0: c
"""
OVERRIDE = {"nested": {"drop": None, "inner": {"two": 22}, "added": "z"}, "list": ["c"]}


def make_chart(root: Path, templates: dict[str, str], crds: dict[str, str] | None = None) -> Path:
    chart = root / "demo"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "values.yaml").write_text(VALUES)
    for name, text in templates.items():
        (chart / "templates" / name).write_text(text)
    for name, text in (crds or {}).items():
        (chart / "crds").mkdir(exist_ok=True)
        (chart / "crds" / name).write_text(text)
    return chart


def test_values_functions_and_builtins_render_as_helm_does(tmp_path: Path) -> None:
    chart = make_chart(
        tmp_path,
        {
            "_helpers.tpl": HELPERS,
            "main.yaml": MAIN,
            "off.yaml": "{{- if .Values.enabled }}\nkind: Never\n{{- end }}\n",
            "NOTES.txt": "Thanks for installing {{ .Chart.Name }}.\n",
        },
        crds={"thing.yaml": "kind: CRD\nname: '{{ not rendered }}'\n"},
    )
    rendered = template(chart, OVERRIDE, name="rel", namespace="space")
    # exactly one output file: no partial, no empty file, no NOTES.txt, no CRD by default
    assert rendered.text == f"---\n# Source: demo/templates/main.yaml\n{EXPECTED}\n"
    assert yaml.safe_load(EXPECTED) == rendered.documents[0]

    with_crds = template(chart, OVERRIDE, name="rel", namespace="space", include_crds=True)
    assert with_crds.text.startswith(
        "---\n# Source: demo/crds/thing.yaml\nkind: CRD\nname: '{{ not rendered }}'\n"
    )


def test_defaults_alone(tmp_path: Path) -> None:
    text = "{{ toYaml .Values.nested }}\nlist: {{ .Values.list }}\n"
    chart = make_chart(tmp_path, {"main.yaml": text})
    rendered = template(chart)
    assert rendered.text.endswith("inner:\n  one: 1\n  two: 2\nkeep: x\nlist: [a b]\n\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{{ required "x is required" .Values.x }}', "x is required"),
        ('{{ required "empty is required" .Values.empty }}', "empty is required"),
        ('{{ fail "refused on purpose" }}', "refused on purpose"),
        ("{{ .Values.name | nosuchfunction }}", 'function "nosuchfunction" not defined'),
        ('{{ include "undefined.template" . }}', "undefined.template"),
        ('{{ env "HOME" }}', 'function "env" not defined'),  # Helm removes env/expandenv
    ],
)
def test_errors_are_reported(tmp_path: Path, text: str, message: str) -> None:
    chart = make_chart(tmp_path, {"main.yaml": text + "\n"})
    with pytest.raises(RenderError) as info:
        template(chart)
    assert message in str(info.value)


def test_unparsable_template_names_the_file(tmp_path: Path) -> None:
    chart = make_chart(tmp_path, {"broken.yaml": "{{ if .Values.x }}\n"})
    with pytest.raises(RenderError) as info:
        template(chart)
    assert "demo/templates/broken.yaml" in str(info.value)


def test_multi_document_file_and_whitespace_control(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        {{- range .Values.list }}
        ---
        kind: Item
        name: {{ . }}
        {{- end }}
        """
    )
    chart = make_chart(tmp_path, {"items.yaml": text})
    rendered = template(chart)
    assert [d["name"] for d in rendered.documents] == ["a", "b"]
