#!/usr/bin/env python3
"""Static checks of the deployment files under deploy/ (deploy/check runs this).

Standard library only (no PyYAML): the YAML files checked here are our own, and the checks
read them line by line; promtool and `docker compose config` parse them for real.

What it checks:
- metric names: every `gatehouse_*` name in the dashboard, the alert rules and their tests is
  one docs/metrics.md lists (a histogram as `_bucket`, `_sum` or `_count` in expressions);
  any other metric in an expression is `up`; label names in selectors, groupings, legends and
  `$labels.x` exist on the metrics used; literal label values are values the docs name;
- the dashboard: valid JSON, uid `gatehouse`, schemaVersion 39, the DS_PROMETHEUS data source
  variable used by every panel and query, unique panel ids, a tidy grid, and every query valid
  PromQL (`promtool check rules` on the queries, when promtool is on PATH);
- the alert rules: group `gatehouse`; each alert has `for`, a `severity` of critical or
  warning, a `summary` and a `description`, and is named in alerts_test.yml;
- compose.yml: every image pinned to a tag (not `latest`) or a digest, or built; every
  depends_on target is a service; secrets only as ${VAR:?...}; mounted paths exist;
  GATEHOUSE_SECTION__KEY variables are real configuration keys;
- deploy/docker/gatehouse.toml: only sections and keys runtime/src/config.rs knows;
- the Dockerfile builds the package and binary runtime/Cargo.toml declares, from pinned images;
- Grafana provisioning loads the dashboard from where compose.yml mounts it, from the
  stack's Prometheus;
- the systemd unit keeps its user, command, state directory, restart policy and hardening;
- stop timeouts (systemd TimeoutStopSec, compose stop_grace_period) exceed [shutdown] timeout_ms.

Exit status 1 and one line per problem when anything is wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
DOCS = ROOT / "docs" / "metrics.md"
CONFIG_RS = ROOT / "runtime" / "src" / "config.rs"
RUNTIME_CARGO = ROOT / "runtime" / "Cargo.toml"

DASHBOARD = DEPLOY / "grafana" / "gatehouse.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
COMPOSE = DEPLOY / "docker" / "compose.yml"
RUNTIME_TOML = DEPLOY / "docker" / "gatehouse.toml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
UNIT = DEPLOY / "systemd" / "gatehouse.service"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Metrics that are not Gatehouse's but may be queried, with their labels.
OTHER_METRICS = {"up": set()}

problems: list[str] = []


def problem(where: str, message: str) -> None:
    problems.append(f"{where}: {message}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --------------------------------------------------------------------------------------------
# docs/metrics.md


class Metric:
    def __init__(self, name: str, kind: str, labels: set[str], row: str):
        self.name = name
        self.kind = kind
        self.labels = labels
        # Backticked words of the row: the documented label values.
        self.values = set(re.findall(r"`([^`]+)`", row))


def read_metrics() -> dict[str, Metric]:
    metrics: dict[str, Metric] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`gatehouse_[a-z0-9_]+`", cells[0]):
            continue
        name = cells[0].strip("`")
        kind = cells[1]
        if kind not in ("counter", "gauge", "histogram"):
            problem(rel(DOCS), f"{name}: unknown type {kind!r}")
        labels = set(re.findall(r"`([a-z_][a-z0-9_]*)`", cells[2]))
        metrics[name] = Metric(name, kind, labels, line)
    if len(metrics) < 10:
        problem(rel(DOCS), f"only {len(metrics)} metrics found in its tables; has the format changed?")
    return metrics


def series_of(metrics: dict[str, Metric]) -> dict[str, tuple[Metric, set[str]]]:
    """Series name → (metric, labels it carries besides job/instance)."""
    out: dict[str, tuple[Metric, set[str]]] = {}
    for m in metrics.values():
        if m.kind == "histogram":
            out[m.name + "_bucket"] = (m, m.labels | {"le"})
            out[m.name + "_sum"] = (m, set(m.labels))
            out[m.name + "_count"] = (m, set(m.labels))
        else:
            out[m.name] = (m, set(m.labels))
    return out


# --------------------------------------------------------------------------------------------
# PromQL, just enough to find metric names and labels.

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
    "or", "unless", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "group", "inf", "nan", "atan2",
}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")


def metric_names(expr: str) -> list[str]:
    """The metric names an expression selects."""
    s = STRING.sub('""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)  # matchers
    s = GROUPING.sub(" ", s)  # label lists
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b\d+(\.\d+)?(ms|s|m|h|d|w|y)\b", " ", s)  # durations
    names = []
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.append(word)
    return names


def check_expr(where: str, expr: str, series: dict, *, legend: str | None = None,
               values_checked: bool = True) -> set[str]:
    """Checks one PromQL expression; returns the labels its series can carry."""
    allowed: set[str] = set(TARGET_LABELS)
    for name in metric_names(expr):
        if name.startswith("gatehouse_"):
            if name in series:
                allowed |= series[name][1]
            elif any(name == s[: -len(suf)] for s in series for suf in HISTOGRAM_SUFFIXES
                     if s.endswith(suf)):
                problem(where, f"{name} is a histogram: query {name}_bucket, _sum or _count")
            else:
                problem(where, f"{name} is not documented in docs/metrics.md")
        elif name in OTHER_METRICS:
            allowed |= OTHER_METRICS[name]
        else:
            problem(where, f"unexpected metric {name!r} (only gatehouse_* and up)")
    for sel in SELECTOR.finditer(expr):
        name, body = sel.group(1), sel.group(2)
        if name in PROMQL_WORDS or name is None:
            own = allowed
            metric = None
        elif name in series:
            metric, own = series[name][0], series[name][1] | TARGET_LABELS
        else:
            own, metric = OTHER_METRICS.get(name, set()) | TARGET_LABELS, None
        for label, op, value in MATCHER.findall(body):
            if label == "__name__":
                continue
            if label not in own:
                problem(where, f"label {label!r} is not a label of {name or 'these metrics'}")
                continue
            if not values_checked or metric is None or label in TARGET_LABELS:
                continue
            words = value.split("|") if op in ("=~", "!~") else [value]
            if all(re.fullmatch(r"[A-Za-z0-9_]+", w) for w in words):
                documented = set().union(
                    *(m.values for m in METRICS.values() if label in m.labels))
                for w in words:
                    if w not in documented:
                        problem(where, f"{label}={w!r}: not a value docs/metrics.md names")
    for kw, labels in GROUPING.findall(STRING.sub('""', expr)):
        for label in filter(None, (x.strip() for x in labels.split(","))):
            if label not in allowed:
                problem(where, f"{kw} ({label}): not a label of the metrics used")
    if legend:
        for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend):
            if label not in allowed:
                problem(where, f"legend {{{{{label}}}}}: not a label of the metrics used")
    return allowed


def names_in_text(where: str, text: str, metrics: dict, series: dict) -> None:
    """Every gatehouse_* word anywhere in a file (prose included) is a documented name."""
    for name in sorted(set(re.findall(r"\bgatehouse_[a-z0-9_]+\b", text))):
        if name not in metrics and name not in series:
            problem(where, f"{name} is not documented in docs/metrics.md")


def promql_valid(exprs: list[tuple[str, str]]) -> None:
    """Runs `promtool check rules` on the expressions as recording rules."""
    promtool = shutil.which("promtool")
    if not promtool or not exprs:
        print("  (promtool not on PATH: dashboard queries not parsed)")
        return
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(exprs):
        lines.append(f"      - record: dashboard_query_{i}")
        lines.append(f"        expr: {json.dumps(expr)}")
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        for line in (r.stdout + r.stderr).splitlines():
            m = re.search(r"dashboard_query_(\d+)", line)
            where = exprs[int(m.group(1))][0] if m else rel(DASHBOARD)
            if "FAILED" in line or "error" in line.lower() or m:
                problem(where, f"promtool: {line.strip()}")
        if not any(p.startswith(rel(DASHBOARD)) for p in problems):
            problem(rel(DASHBOARD), "promtool check rules failed on the queries:\n" + r.stdout + r.stderr)


# --------------------------------------------------------------------------------------------
# The dashboard


def grafana_to_promql(expr: str) -> str:
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    expr = re.sub(r"\$\{__(rate_interval|interval|range)\}", "5m", expr)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def check_dashboard(metrics: dict, series: dict) -> None:
    where = rel(DASHBOARD)
    text = DASHBOARD.read_text()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        problem(where, f"invalid JSON: {e}")
        return
    if d.get("uid") != "gatehouse":
        problem(where, f"uid is {d.get('uid')!r}, expected 'gatehouse'")
    if d.get("schemaVersion") != 39:
        problem(where, f"schemaVersion is {d.get('schemaVersion')!r}, expected 39")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds_var = variables.get("DS_PROMETHEUS")
    if not ds_var or ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problem(where, "no data source variable DS_PROMETHEUS (type datasource, query prometheus)")
    names_in_text(where, text, metrics, series)

    def ds_ok(ds) -> bool:
        return isinstance(ds, dict) and ds.get("uid") == "${DS_PROMETHEUS}"

    exprs: list[tuple[str, str]] = []
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        if not ds_ok(v.get("datasource")):
            problem(where, f"variable {name}: datasource is not ${{DS_PROMETHEUS}}")
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", q)
        if m:
            allowed = check_expr(f"{where}: variable {name}", m.group(1), series)
            if m.group(2) not in allowed:
                problem(where, f"variable {name}: {m.group(2)!r} is not a label of {m.group(1)}")
            exprs.append((f"{where}: variable {name}", grafana_to_promql(m.group(1))))
        elif q:
            check_expr(f"{where}: variable {name}", q, series)
            exprs.append((f"{where}: variable {name}", grafana_to_promql(q)))

    panels = []

    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))

    walk(d.get("panels", []))
    if not panels:
        problem(where, "no panels")
    ids = [p.get("id") for p in panels]
    for dup in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        problem(where, f"panel id {dup} is used more than once")
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        title = p.get("title", "?")
        pw = f"{where}: panel {title!r}"
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if not all(isinstance(v, int) for v in (x, y, w, h)) or x < 0 or w <= 0 or x + w > 24:
            problem(pw, f"bad gridPos {g}")
        else:
            for cx in range(x, x + w):
                for cy in range(y, y + h):
                    if (cx, cy) in cells:
                        problem(pw, f"overlaps panel {cells[(cx, cy)]!r}")
                        break
                    cells[(cx, cy)] = title
                else:
                    continue
                break
        if p.get("type") == "row":
            continue
        if not ds_ok(p.get("datasource")):
            problem(pw, "datasource is not ${DS_PROMETHEUS}")
        targets = p.get("targets") or []
        if not targets:
            problem(pw, "no queries")
        for t in targets:
            tw = f"{pw} query {t.get('refId', '?')}"
            if not ds_ok(t.get("datasource")):
                problem(tw, "datasource is not ${DS_PROMETHEUS}")
            expr = t.get("expr", "")
            if not expr.strip():
                problem(tw, "empty expr")
                continue
            check_expr(tw, expr, series, legend=t.get("legendFormat"))
            exprs.append((tw, grafana_to_promql(expr)))
    promql_valid(exprs)


# --------------------------------------------------------------------------------------------
# Line-oriented YAML reading (our own files only)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def significant(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
        return v[1:-1]
    return v


def scalar_at(lines: list[str], i: int) -> str:
    """The value of the `key: value` on line i, following block scalars and continuations."""
    key_indent = indent_of(lines[i])
    value = lines[i].split(":", 1)[1].strip()
    if value and value[0] in "\"'":
        return unquote(value)
    if re.sub(r"\s+#.*$", "", value) in ("|", "|-", "|+", ">", ">-", ">+", ""):
        value = ""
    parts = [value] if value else []
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or indent_of(lines[j]) > key_indent):
        parts.append(lines[j].strip())
        j += 1
    return "\n".join(parts).strip()


# --------------------------------------------------------------------------------------------
# Alert rules and their tests


def check_alerts(metrics: dict, series: dict) -> None:
    where = rel(ALERTS)
    text = ALERTS.read_text()
    names_in_text(where, text, metrics, series)
    lines = text.splitlines()
    if not re.search(r"^\s*-\s*name:\s*gatehouse\s*$", text, re.M):
        problem(where, "no rule group named gatehouse")
    starts = [i for i, l in enumerate(lines) if re.match(r"\s*-\s*(alert|record):", l)]
    if not starts:
        problem(where, "no rules")
    alerts = []
    for n, i in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        # A rule ends where the indentation drops below its own (the next group, say).
        base = indent_of(lines[i])
        for j in range(i + 1, end):
            if significant(lines[j]) and indent_of(lines[j]) <= base:
                end = j
                break
        block = lines[i:end]
        m = re.match(r"\s*-\s*(alert|record):\s*(\S+)", lines[i])
        kind, name = m.group(1), unquote(m.group(2))
        rw = f"{where}: {kind} {name}"
        fields: dict[str, str] = {}
        for k, line in enumerate(block):
            km = re.match(r"\s*(?:-\s*)?([a-z_]+):", line)
            if km and significant(line):
                fields.setdefault(km.group(1), scalar_at(block, k))
        expr = fields.get("expr", "")
        if not expr:
            problem(rw, "no expr")
            continue
        allowed = check_expr(rw, expr, series)
        if kind == "record":
            continue
        alerts.append(name)
        if "for" not in fields:
            problem(rw, "no `for:`")
        if fields.get("severity") not in ("critical", "warning"):
            problem(rw, f"labels.severity is {fields.get('severity')!r}, expected critical or warning")
        for key in ("summary", "description"):
            if not fields.get(key):
                problem(rw, f"no annotations.{key}")
        for label in set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", "\n".join(block))):
            if label not in allowed:
                problem(rw, f"$labels.{label} is not a label of the alert's series")
    if len(alerts) != len(set(alerts)):
        problem(where, "an alert name is used twice")

    # The tests: series use documented names and labels; every alert is tested.
    tw = rel(ALERTS_TEST)
    ttext = ALERTS_TEST.read_text()
    names_in_text(tw, ttext, metrics, series)
    for s in re.findall(r"series:\s*(?:'([^']*)'|\"((?:[^\"\\]|\\.)*)\")", ttext):
        check_expr(f"{tw}: series {s[0] or s[1]}", s[0] or s[1], series, values_checked=False)
    tested = set(re.findall(r"alertname:\s*([A-Za-z0-9_]+)", ttext))
    for name in alerts:
        if name not in tested:
            problem(tw, f"alert {name} is not tested")
    for name in sorted(tested - set(alerts)):
        problem(tw, f"tests alert {name}, which alerts.yml does not define")


# --------------------------------------------------------------------------------------------
# Configuration keys (runtime/src/config.rs)


def config_keys() -> dict[str, set[str]] | None:
    """Section → keys, read from the serde structs of runtime/src/config.rs."""
    src = CONFIG_RS.read_text()
    structs = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", src, re.S):
        body = re.sub(r"//.*", "", m.group(2))
        structs[m.group(1)] = re.findall(r"pub (\w+)\s*:\s*([\w:<>]+)", body)
    if "Config" not in structs:
        problem(rel(CONFIG_RS), "no `pub struct Config` found: update deploy/check_files.py")
        return None
    sections = {}
    for field, ty in structs["Config"]:
        if ty in structs:
            sections[field] = {f for f, _ in structs[ty]}
    return sections


def check_runtime_toml(sections: dict[str, set[str]] | None) -> None:
    where = rel(RUNTIME_TOML)
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        print(f"  (Python {sys.version.split()[0]} has no tomllib: {where} not parsed)")
        return
    try:
        doc = tomllib.loads(RUNTIME_TOML.read_text())
    except tomllib.TOMLDecodeError as e:
        problem(where, f"invalid TOML: {e}")
        return
    if sections is None:
        return
    for section, table in doc.items():
        if section not in sections:
            problem(where, f"[{section}] is not a configuration section (runtime/src/config.rs)")
            continue
        if not isinstance(table, dict):
            problem(where, f"{section} is not a table")
            continue
        for key in table:
            if key not in sections[section]:
                problem(where, f"[{section}] {key} is not a configuration key")


def check_env_var(where: str, var: str, sections: dict[str, set[str]] | None) -> None:
    m = re.fullmatch(r"GATEHOUSE_([A-Z0-9_]+?)__([A-Z0-9_]+)", var)
    if not m:
        problem(where, f"{var}: not of the form GATEHOUSE_SECTION__KEY")
        return
    section, key = m.group(1).lower(), m.group(2).lower()
    if sections is not None and key not in sections.get(section, set()):
        problem(where, f"{var}: [{section}] {key} is not a configuration key")


# --------------------------------------------------------------------------------------------
# compose.yml


def image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    image = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", image)
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return False
    tag = last.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest" and "$" not in tag


def check_compose(sections) -> None:
    where = rel(COMPOSE)
    text = COMPOSE.read_text()
    lines = text.splitlines()
    try:
        top = next(i for i, l in enumerate(lines) if re.match(r"services:\s*$", l))
    except StopIteration:
        problem(where, "no top-level services:")
        return
    services: dict[str, list[str]] = {}
    current = None
    for line in lines[top + 1:]:
        if not significant(line):
            continue
        ind = indent_of(line)
        if ind == 0:
            break
        m = re.match(r"  ([A-Za-z0-9_.-]+):\s*$", line)
        if ind == 2 and m:
            current = m.group(1)
            services[current] = []
        elif current:
            services[current].append(line)
    if not services:
        problem(where, "no services")
    for name, block in services.items():
        sw = f"{where}: service {name}"
        image = build = None
        deps: list[str] = []
        in_deps = False
        for k, line in enumerate(block):
            ind = indent_of(line)
            if ind == 4:
                in_deps = False
                km = re.match(r"\s*([a-z_]+):\s*(.*)$", line)
                if not km:
                    continue
                key, value = km.group(1), km.group(2)
                if key == "image":
                    image = unquote(value)
                elif key == "build":
                    build = scalar_at(block, k) or "yes"
                elif key == "depends_on":
                    in_deps = True
                    if value.startswith("["):
                        deps += [unquote(x) for x in value.strip("[]").split(",") if x.strip()]
            elif in_deps and ind == 6:
                dm = re.match(r"\s*(?:-\s*)?([A-Za-z0-9_.-]+)\s*:?\s*$", line)
                if dm:
                    deps.append(unquote(dm.group(1)))
        if image is None and build is None:
            problem(sw, "neither image nor build")
        if image is not None and not image_pinned(image):
            problem(sw, f"image {image!r} is not pinned to a tag (or is `latest`)")
        for dep in deps:
            if dep not in services:
                problem(sw, f"depends_on {dep!r}, which is not a service")
    # Secrets: interpolated and required, never literal.
    for n, line in enumerate(lines, 1):
        if not significant(line):
            continue
        body = line.split(" #", 1)[0]
        for var in re.findall(r"(?<!\$)\$\{([^}]*)\}", body):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(:\?.*|:-.*)", var):
                problem(f"{where}:{n}", f"${{{var}}}: write ${{NAME:?message}} (required) or ${{NAME:-default}}")
        km = re.match(r"\s*(?:-\s*)?([A-Za-z0-9_]+)\s*[:=]\s*(.+)$", body)
        if km and re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|SECRET_KEY", km.group(1)):
            if not re.search(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?", km.group(2)):
                problem(f"{where}:{n}", f"{km.group(1)} must come from ${{VAR:?...}}, not the file")
        if re.search(r"://[^/\s:@]+:[^@\s$]+@", body):
            problem(f"{where}:{n}", "a URL with a literal password")
        for var in re.findall(r"\b(GATEHOUSE_[A-Z0-9_]+)\s*[:=]", body):
            check_env_var(f"{where}:{n}", var, sections)
    # Mounted files and the build context exist.
    for n, line in enumerate(lines, 1):
        m = re.match(r"\s*-\s*[\"']?(\.{1,2}/[^:\"']+):", line)
        if m and not (COMPOSE.parent / m.group(1)).exists():
            problem(f"{where}:{n}", f"{m.group(1)} does not exist")
        m = re.match(r"\s*(context|dockerfile):\s*(\S+)", line)
        if m:
            ctx = next((re.match(r"\s*context:\s*(\S+)", l) for l in lines if re.match(r"\s*context:", l)), None)
            base = COMPOSE.parent / (ctx.group(1) if ctx else ".")
            path = COMPOSE.parent / m.group(2) if m.group(1) == "context" else base / m.group(2)
            if not path.exists():
                problem(f"{where}:{n}", f"{m.group(1)} {m.group(2)} does not exist")


# --------------------------------------------------------------------------------------------
# Dockerfile, timeouts


def check_dockerfile() -> None:
    where = rel(DOCKERFILE)
    text = DOCKERFILE.read_text()
    cargo = RUNTIME_CARGO.read_text()
    package = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', cargo, re.M | re.S)
    binary = re.search(r'^\[\[bin\]\][^\[]*?^name\s*=\s*"([^"]+)"', cargo, re.M | re.S)
    for m in re.finditer(r"^FROM\s+(\S+)", text, re.M):
        if not image_pinned(m.group(1)):
            problem(where, f"FROM {m.group(1)} is not pinned to a tag")
    build = re.search(r"cargo build ([^\n\\]*)", text)
    if not build:
        problem(where, "no `cargo build`")
    else:
        args = build.group(1)
        for flag in ("--release", "--locked"):
            if flag not in args:
                problem(where, f"cargo build without {flag}")
        if package and f"-p {package.group(1)}" not in args:
            problem(where, f"cargo build does not build -p {package.group(1)} (runtime/Cargo.toml)")
        if binary and f"--bin {binary.group(1)}" not in args:
            problem(where, f"cargo build does not build --bin {binary.group(1)} (runtime/Cargo.toml)")
    if binary and not re.search(rf'^ENTRYPOINT \["{re.escape(binary.group(1))}"\]', text, re.M):
        problem(where, f'ENTRYPOINT is not ["{binary.group(1) if binary else "gatehouse"}"]')
    if not re.search(r"^USER\s+(?!root\b|0\b)\S+", text, re.M):
        problem(where, "no non-root USER")
    for m in re.finditer(r"^COPY\s+(?!--from)(\S+)\s", text, re.M):
        if m.group(1) != "." and not (ROOT / m.group(1)).exists():
            problem(where, f"COPY {m.group(1)}: no such file")


def seconds(value: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m)?\s*", value)
    if not m:
        return None
    scale = {"ms": 0.001, "s": 1, "min": 60, "m": 60, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def check_timeouts() -> None:
    shutdown_s = 10.0
    try:
        import tomllib

        shutdown_s = tomllib.loads(RUNTIME_TOML.read_text()).get("shutdown", {}).get("timeout_ms", 10000) / 1000
    except Exception:
        pass
    unit = UNIT.read_text()
    m = re.search(r"^TimeoutStopSec=(\S+)", unit, re.M)
    stop = seconds(m.group(1)) if m else None
    if stop is None or stop <= shutdown_s:
        problem(rel(UNIT), f"TimeoutStopSec must exceed the shutdown timeout ({shutdown_s:g} s)")
    m = re.search(r"stop_grace_period:\s*(\S+)", COMPOSE.read_text())
    grace = seconds(m.group(1)) if m else None
    if grace is None or grace <= shutdown_s:
        problem(rel(COMPOSE), f"the gatehouse service's stop_grace_period must exceed {shutdown_s:g} s")
    for var in re.findall(r"\b(GATEHOUSE_[A-Z0-9_]+)=", unit):
        check_env_var(rel(UNIT), var, SECTIONS)


# What the unit must keep (systemd-analyze checks the syntax, when it is installed).
UNIT_REQUIRED = [
    "User=gatehouse",
    "ExecStart=/usr/local/bin/gatehouse serve --config /etc/gatehouse/gatehouse.toml",
    "EnvironmentFile=-/etc/gatehouse/env",
    "WorkingDirectory=/var/lib/gatehouse",
    "StateDirectory=gatehouse",
    "Restart=on-failure",
    "LimitNOFILE=65536",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "ReadWritePaths=/var/lib/gatehouse",
]


def check_unit() -> None:
    directives = {l.strip() for l in UNIT.read_text().splitlines() if not l.lstrip().startswith("#")}
    for d in UNIT_REQUIRED:
        if d not in directives:
            problem(rel(UNIT), f"missing {d}")


# Grafana provisioning: the provider reads the directory compose.yml mounts the dashboard in,
# and the data source is the compose stack's Prometheus.
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"


def check_grafana_provisioning() -> None:
    compose = COMPOSE.read_text()
    mount = re.search(r"\.\./grafana/gatehouse\.json:(/[^:\s\"']+)", compose)
    provider = GRAFANA_PROVISIONING / "dashboards" / "gatehouse.yml"
    path = re.search(r"^\s*path:\s*(\S+)", provider.read_text(), re.M)
    if not mount or not path or os.path.dirname(mount.group(1)) != path.group(1).rstrip("/"):
        problem(rel(provider), f"path {path and path.group(1)!r} is not where compose.yml mounts "
                f"gatehouse.json ({mount and mount.group(1)!r})")
    source = GRAFANA_PROVISIONING / "datasources" / "prometheus.yml"
    url = re.search(r"^\s*url:\s*http://([A-Za-z0-9_.-]+):", source.read_text(), re.M)
    if not url or not re.search(rf"^  {re.escape(url.group(1))}:\s*$", compose, re.M):
        problem(rel(source), f"url host {url and url.group(1)!r} is not a compose service")
    if not re.search(r"^\s*type:\s*prometheus\s*$", source.read_text(), re.M):
        problem(rel(source), "not a prometheus data source")


# --------------------------------------------------------------------------------------------
# A full YAML parse, where PyYAML happens to be installed (CI does not need it: promtool parses
# the Prometheus files, `docker compose config` the compose file, when present).


def check_yaml_parse() -> None:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        print("  (PyYAML not installed: the compose and Grafana files were read line by line only)")
        return
    files = [ALERTS, ALERTS_TEST, DEPLOY / "prometheus" / "prometheus.yml",
             DEPLOY / "docker" / "prometheus.yml", COMPOSE,
             *sorted((DEPLOY / "grafana" / "provisioning").rglob("*.yml"))]
    docs = {}
    for path in files:
        try:
            docs[path] = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            problem(rel(path), f"invalid YAML: {e}")
    compose = docs.get(COMPOSE)
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        problem(rel(COMPOSE), "no services mapping")
        return
    services = compose["services"]
    for name, svc in services.items():
        image = (svc or {}).get("image")
        if image is None and "build" not in (svc or {}):
            problem(f"{rel(COMPOSE)}: service {name}", "neither image nor build")
        if image is not None and not image_pinned(str(image)):
            problem(f"{rel(COMPOSE)}: service {name}", f"image {image!r} is not pinned")
        deps = (svc or {}).get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                problem(f"{rel(COMPOSE)}: service {name}", f"depends_on {dep!r}, which is not a service")


# --------------------------------------------------------------------------------------------

METRICS = read_metrics()
SECTIONS = config_keys()


def main() -> int:
    series = series_of(METRICS)
    steps = [
        ("dashboard", lambda: check_dashboard(METRICS, series)),
        ("alert rules and tests", lambda: check_alerts(METRICS, series)),
        ("runtime configuration", lambda: check_runtime_toml(SECTIONS)),
        ("compose", lambda: check_compose(SECTIONS)),
        ("Dockerfile", check_dockerfile),
        ("Grafana provisioning", check_grafana_provisioning),
        ("systemd unit", check_unit),
        ("stop timeouts", check_timeouts),
        ("YAML parse (PyYAML, optional)", check_yaml_parse),
    ]
    for title, step in steps:
        before = len(problems)
        step()
        print(f"  {title}: {'ok' if len(problems) == before else 'FAILED'}")
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"  {len(METRICS)} documented metrics; every name and label used is one of them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
