// chart-render: render a Helm chart the way `helm template` does, for the chart tests.
//
// No helm binary can be installed here, so this is a small stand-in built offline from
// Debian's Go packages (scripts: tests/charts/build-renderer.sh). It uses the same
// engine as Helm, Go's text/template, with the same function library, Masterminds
// sprig v3 (Debian's 3.2.3, imported by its GOPATH path; minus env/expandenv, which
// Helm removes), and the same YAML library for
// values and toYaml (sigs.k8s.io/yaml). What Helm adds on top is written here after
// Helm's documented behaviour:
//
//   - values: the chart's values.yaml, then each -f file coalesced over it (maps merge
//     key by key, anything else replaces, a null removes the key);
//   - built-in objects: .Values, .Release (Name, Namespace, Service, IsInstall,
//     IsUpgrade, Revision), .Chart (the Chart.yaml fields, capitalised), .Template
//     (Name, BasePath), .Capabilities.KubeVersion;
//   - functions: include, tpl, required, toYaml, fromYaml, toJson, fromJson, lookup
//     (always empty, as in `helm template`);
//   - every file of templates/ is parsed into one template set; files whose name starts
//     with "_" only define templates, NOTES.txt is not output; option missingkey=zero
//     and "<no value>" removed, as Helm does when not --strict;
//   - --include-crds prints the files of crds/ first, unrendered.
//
// Output: like `helm template`, each rendered file after "---\n# Source: CHART/PATH".
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

const recursionLimit = 1000

func main() {
	var files valueFiles
	flag.Var(&files, "f", "values file coalesced over the chart's values.yaml (repeatable)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	crds := flag.Bool("include-crds", false, "print crds/ first")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: chart-render [-f values.yaml]... [--name N] [--namespace NS] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), files, *name, *namespace, *crds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if out == nil {
		out = map[string]interface{}{}
	}
	return out, nil
}

// coalesce lays src over dst: maps merge recursively, other values replace, null deletes.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for key, value := range src {
		if value == nil {
			delete(dst, key)
			continue
		}
		srcMap, srcIsMap := value.(map[string]interface{})
		dstMap, dstIsMap := dst[key].(map[string]interface{})
		if srcIsMap && dstIsMap {
			dst[key] = coalesce(dstMap, srcMap)
		} else {
			dst[key] = value
		}
	}
	return dst
}

func capitalised(meta map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for key, value := range meta {
		if key == "" {
			continue
		}
		out[strings.ToUpper(key[:1])+key[1:]] = value
	}
	return out
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(s string) map[string]interface{} {
	out := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(s), &out); err != nil {
		out["Error"] = err.Error()
	}
	return out
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	out := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		out["Error"] = err.Error()
	}
	return out
}

func required(warn string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(warn)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, errors.New(warn)
	}
	return val, nil
}

func render(chartDir string, files []string, release, namespace string, withCRDs bool) (string, error) {
	meta, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	chartName, _ := meta["name"].(string)
	if chartName == "" {
		return "", errors.New("Chart.yaml: name is required")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil && !os.IsNotExist(err) {
		return "", err
	}
	if values == nil {
		values = map[string]interface{}{}
	}
	for _, file := range files {
		over, err := readYAMLMap(file)
		if err != nil {
			return "", err
		}
		values = coalesce(values, over)
	}

	var names []string
	sources := map[string]string{}
	root := filepath.Join(chartDir, "templates")
	err = filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		key := path.Join(chartName, filepath.ToSlash(rel))
		names = append(names, key)
		sources[key] = string(data)
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)

	t := template.New("gotpl").Option("missingkey=zero")
	depth := map[string]int{}
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["required"] = required
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		depth[name]++
		defer func() { depth[name]-- }()
		if depth[name] > recursionLimit {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := t.Clone()
		if err != nil {
			return "", err
		}
		parsed, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf strings.Builder
		if err := parsed.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	t.Funcs(funcs)
	for _, name := range names {
		if _, err := t.New(name).Parse(sources[name]); err != nil {
			return "", fmt.Errorf("parse error in %s: %w", name, err)
		}
	}

	top := map[string]interface{}{
		"Values": values,
		"Chart":  capitalised(meta),
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{
				"Version": "v1.30.0", "GitVersion": "v1.30.0", "Major": "1", "Minor": "30",
			},
		},
		"Files": map[string]interface{}{},
	}

	var out bytes.Buffer
	if withCRDs {
		crdFiles, _ := filepath.Glob(filepath.Join(chartDir, "crds", "*"))
		sort.Strings(crdFiles)
		for _, file := range crdFiles {
			data, err := os.ReadFile(file)
			if err != nil {
				return "", err
			}
			rel, _ := filepath.Rel(chartDir, file)
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", path.Join(chartName, filepath.ToSlash(rel)), data)
		}
	}
	for _, name := range names {
		base := path.Base(name)
		if strings.HasPrefix(base, "_") || strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		data := map[string]interface{}{}
		for k, v := range top {
			data[k] = v
		}
		data["Template"] = map[string]interface{}{
			"Name": name, "BasePath": path.Join(chartName, "templates"),
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, data); err != nil {
			return "", fmt.Errorf("render error in %s: %w", name, err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, text)
	}
	return out.String(), nil
}
