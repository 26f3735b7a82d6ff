"""experiments.py report: the whole experiment history as ONE self-contained HTML file.

Inline CSS, inline JS, charts as inline PNG data URIs: no CDN, no font, no request of any
kind, so it opens from disk, from a CI artifact or a mail attachment the same. Sections:
versions table (click a header to sort), charts (plots.py), two versions side by side
(metric deltas, changed params, changed data md5s: computed in the page from an embedded
JSON block, any pair), the production ledger (every entry, `action` and `reason` when
present), each version's lineage (commit, data md5s, command).

Everything is read the way `experiments.py list` reads it (history.version_record per tag),
once; the charts reuse those records.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from . import history, plots

MAX_SWEEPS = 8  # sweep charts for the newest versions with several runs (size stays small)
LEDGER_COLS = ("seq", "time", "action", "version", "run_id", "reason", "alias", "aliases", "source")


def _e(v) -> str:
    return html.escape("" if v is None else history.fmt(v) if not isinstance(v, str) else v)


def _json_script(id_: str, obj) -> str:
    # "<" escaped: no string in the data can close the script element
    text = json.dumps(obj, default=str, ensure_ascii=False, sort_keys=True).replace(
        "<", "\\u003c")
    return f'<script type="application/json" id="{id_}">{text}</script>'


def _img(fig, alt: str) -> tuple[str, int]:
    data = plots.png_bytes(fig)
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<img alt="{html.escape(alt)}" width="1200" '
            f'src="data:image/png;base64,{b64}">', len(data))


def _command(rec: dict, lineage: dict) -> str | None:
    best = rec["_summary"].best
    for v in ((best.values.get("ev_command") if best else None), lineage.get("command"),
              (lineage.get("run_lineage") or {}).get("ev_command")):
        if v:
            return v if isinstance(v, str) else json.dumps(v)
    return None


def version_view(rec: dict, tag: history.TagInfo, split) -> dict:
    """What the page shows of one version (JSON-able)."""
    s = rec["_summary"]
    params, metrics = split(s.best.values) if s.best else ({}, {})
    metrics = {k: v for k, v in metrics.items() if plots._num(v) is not None}
    lineage = tag.lineage
    data = {p: o.md5 for p, o in sorted(history.data_outs(rec["_outs"]).items())}
    return {"tag": rec["tag"], "version": rec["version"], "date": rec["date"],
            "commit": rec["commit"], "runs": rec["runs"], "best_run": rec["best_run"],
            "model": rec["model"], "metric": rec["metric"], "value": rec["value"],
            "params": params, "metrics": metrics, "data": data, "data_short": rec["data"],
            "description": rec["description"], "subject": tag.subject,
            "command": _command(rec, lineage), "dirty": lineage.get("dirty"),
            "run_lineage": lineage.get("run_lineage") or {}}


def _versions_table(views: list[dict], metric_cols: list[str], marks: dict) -> str:
    head = ["tag", "date", "runs", "best run", "model", *metric_cols, "data", "production",
            "description"]
    out = ['<table class="sortable" id="versions"><thead><tr>']
    out += [f'<th data-col="{i}">{_e(h)}</th>' for i, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for v in views:
        mark = marks.get(v["tag"]) or "-"
        cells = [v["tag"], v["date"][:19].replace("T", " "), v["runs"], v["best_run"] or "-",
                 v["model"] or "-"]
        cells += [v["metrics"].get(m) for m in metric_cols]
        cells += [v["data_short"], mark, v["description"]]
        tds = "".join(f'<td class="num">{_e(c)}</td>' if isinstance(c, (int, float))
                      and not isinstance(c, bool) else f"<td>{_e(c if c is not None else '-')}</td>"
                      for c in cells)
        out.append(f'<tr data-tag="{_e(v["tag"])}">{tds}</tr>')
    out.append("</tbody></table>")
    return "".join(out)


def _ledger_state(repo: Path, entries: list[dict]) -> str | None:
    """What the ledger section says of where its entries come from: the working tree (as
    model_manager.py status and history read it), and whether that differs from HEAD."""
    from .proc import git
    from .registry import alias

    led = alias(repo).ledger
    if not entries or not git(repo, "status", "--porcelain", "--", led, check=False):
        return None
    return (f"{led} as in the working tree, with changes not committed yet (what "
            "model_manager.py status and history show; git diff shows them)")


def _ledger_table(entries: list[dict], metric: str) -> str:
    if not entries:
        return "<p>No production ledger (models/production/ledger.jsonl) yet: nothing was " \
               "promoted with model_manager.py.</p>"
    cols = [c for c in LEDGER_COLS if any(c in e for e in entries)]
    out = ['<table class="sortable" id="ledger"><thead><tr>']
    out += [f'<th data-col="{i}">{_e(c)}</th>' for i, c in
            enumerate([*cols, metric, "model md5", "other fields"])]
    out.append("</tr></thead><tbody>")
    for e in entries:
        cells = [e.get(c) for c in cols]
        for c, v in zip(cols, cells, strict=True):
            if isinstance(v, (list, dict)):
                cells[cols.index(c)] = json.dumps(v, default=str)
        m = e.get("metrics")
        cells.append(m.get(metric) if isinstance(m, dict) else None)
        model = e.get("model")
        cells.append((model.get("md5") or "")[:12] if isinstance(model, dict) else None)
        # seq and id are the ledger's own bookkeeping (parse_ledger numbers old ledgers)
        rest = {k: v for k, v in e.items()
                if k not in cols and k not in ("metrics", "model", "seq", "id")}
        other = json.dumps(rest, default=str, sort_keys=True) if rest else ""
        cells.append(other if len(other) <= 300 else other[:297] + "...")
        out.append("<tr>" + "".join(f"<td>{_e(c if c is not None else '-')}</td>"
                                    for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _lineage(views: list[dict]) -> str:
    out = []
    for v in reversed(views):  # newest first: what one looks for
        data = "".join(f"<li><code>{_e(p)}</code> md5 <code>{_e(m)}</code></li>"
                       for p, m in v["data"].items()) or "<li>no DVC-tracked data</li>"
        rl = "".join(f"<li>{_e(k)}: <code>{_e(x)}</code></li>"
                     for k, x in sorted(v["run_lineage"].items()))
        dirty = "" if v["dirty"] is None else f" (dirty tree: {_e(v['dirty'])})"
        out.append(
            f'<details id="lineage-{_e(v["tag"])}"><summary><b>{_e(v["tag"])}</b> '
            f'{_e(v["subject"])}</summary><ul>'
            f'<li>commit <code>{_e(v["commit"])}</code>{dirty}</li>'
            f'<li>logged as version <code>{_e(v["version"])}</code>, best run '
            f'<code>{_e(v["best_run"] or "-")}</code> of {_e(v["runs"])}</li>'
            f'<li>command: <code>{_e(v["command"] or "not recorded")}</code></li>'
            f"<li>data:<ul>{data}</ul></li>"
            + (f"<li>run lineage:<ul>{rl}</ul></li>" if rl else "") + "</ul></details>")
    return "".join(out) or "<p>No tagged versions.</p>"


def build(repo: Path, db_rel: str, metric: str | None, mode: str, settings, warn=None) -> dict:
    """The report's HTML and what it holds: {"html", "versions", "charts", "notes", ...}."""
    recs = plots.history_records(repo, db_rel, metric, mode, warn)
    ledger = plots.read_ledger_safe(repo, warn)
    metric = recs[0]["metric"] if recs else (metric or "f1_score")
    tags = history.all_tags(repo)
    views = [version_view(r, tags[r["tag"]], settings.split) for r in recs]
    metric_cols = sorted({m for v in views for m in v["metrics"]},
                         key=lambda m: (m != metric, m))
    pts = plots.version_points(recs, ledger, plots.production_now(repo, ledger, warn))
    ledger_note = _ledger_state(repo, ledger)
    marks = {p.tag: "production" if p.production else "promoted" if p.promoted else ""
             for p in pts}

    charts, notes, png_bytes = [], [], 0
    figs = []
    try:
        figs.append(("versions", f"{metric} per version",
                     plots.fig_versions(pts, metric, mode)))
    except plots.NothingToPlot as exc:
        notes.append(f"versions chart: {exc.line()}")
    sweeps = [r for r in recs if r["runs"] >= 2][-MAX_SWEEPS:]
    for r in sweeps:
        s = r["_summary"]
        try:
            d = plots.sweep_data(s.runs, s.version, s.metric, mode, settings.split, ledger,
                                 r["best_run"])
            figs.append((f"sweep {r['tag']}", f"{r['tag']} sweep", plots.fig_sweep(d)))
        except plots.NothingToPlot as exc:
            notes.append(f"sweep chart of {r['tag']}: {exc.line()}")
    cur = repo / db_rel
    if cur.is_file():
        for m in dict.fromkeys([metric, "loss"]):
            try:
                c = plots.curves_data(cur, None, m, None, f"{db_rel} in the working tree")
            except plots.NothingToPlot:
                continue
            figs.append((f"curves {m}", f"{m} per {c.step}",
                         plots.fig_curves(c, "every run", mode if m == metric else None)))
    chart_html = []
    for name, alt, fig in figs:
        img, n = _img(fig, alt)
        png_bytes += n
        charts.append(name)
        chart_html.append(f'<figure id="chart-{_e(name.replace(" ", "-"))}">{img}'
                          f"<figcaption>{_e(alt)}</figcaption></figure>")
    if len(sweeps) < len([r for r in recs if r["runs"] >= 2]):
        notes.append(f"sweep charts for the newest {MAX_SWEEPS} versions with several runs; "
                     "others: experiments.py plot --kind sweep --version TAG")
    chart_html += [f'<p class="note">{_e(n)}</p>' for n in notes]

    e_views = [v for v in views if history.parse_e(v["tag"])]
    pair = (e_views or views)[-2:]
    default_pair = [p["tag"] for p in pair] if len(pair) == 2 else []
    title = f"Experiment history: {repo.name}"
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    options = "".join(f'<option value="{_e(v["tag"])}">{_e(v["tag"])}</option>' for v in views)
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head><body>
<h1>{_e(title)}</h1>
<p class="meta">{len(views)} versions, ranked by <b>{_e(metric)}</b> ({_e(mode)}); results DB
<code>{_e(db_rel)}</code>; built {built} by experiments.py report. Click a column header
to sort.</p>
<nav><a href="#s-versions">versions</a> <a href="#s-charts">charts</a>
<a href="#s-compare">compare</a> <a href="#s-ledger">production ledger</a>
<a href="#s-lineage">lineage</a></nav>
<h2 id="s-versions">Versions</h2>
{_versions_table(views, metric_cols, marks) if views else "<p>No tagged versions yet.</p>"}
<h2 id="s-charts">Charts</h2>
{"".join(chart_html) or "<p>No charts.</p>"}
<h2 id="s-compare">Compare two versions</h2>
<p><label>from <select id="cmp-a">{options}</select></label>
<label>to <select id="cmp-b">{options}</select></label></p>
<div id="compare-out"><p>Pick two versions.</p></div>
<h2 id="s-ledger">Production ledger</h2>
{f'<p class="note" id="ledger-state">{_e(ledger_note)}</p>' if ledger_note else ""}
{_ledger_table(ledger, metric)}
<h2 id="s-lineage">Lineage</h2>
{_lineage(views)}
{_json_script("ev-data", {"versions": views, "default_pair": default_pair, "metric": metric,
                          "mode": mode})}
<script>{JS}</script>
</body></html>
"""
    return {"html": body, "versions": len(views), "charts": charts, "notes": notes,
            "png_bytes": png_bytes, "ledger_entries": len(ledger),
            "ledger_uncommitted": ledger_note is not None, "metric": metric,
            "mode": mode, "default_pair": default_pair}


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;
max-width:1260px;padding:0 16px;color:#1b1f24;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.meta,.note{color:#57606a}nav a{margin-right:12px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f6f8fa;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fbfbfc}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#57606a;font-size:13px}code{font-size:12.5px;word-break:break-all}
.up{color:#1a7f37}.down{color:#cf222e}details{margin:4px 0}select{font-size:14px}
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ev-data").textContent);
  function cellValue(td) {
    var t = td.textContent.trim(), n = Number(t);
    return (t !== "" && t !== "-" && !isNaN(n)) ? n : t.toLowerCase();
  }
  function sortBy(table, th) {
    var col = Number(th.getAttribute("data-col"));
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () { sortBy(t, th); });
    });
  });
  function byTag(tag) {
    for (var i = 0; i < data.versions.length; i++) {
      if (data.versions[i].tag === tag) { return data.versions[i]; }
    }
    return null;
  }
  function fmt(v) {
    if (v === null || v === undefined) { return "-"; }
    if (typeof v === "number" && !Number.isInteger(v)) { return String(Number(v.toPrecision(4))); }
    return String(v);
  }
  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c];
    });
  }
  function keys(a, b) {
    var k = {}, out = [];
    Object.keys(a).concat(Object.keys(b)).forEach(function (x) { k[x] = 1; });
    for (var x in k) { out.push(x); }
    return out.sort();
  }
  function table(id, head, rows) {
    if (!rows.length) { return "<p id=\"" + id + "\">none changed</p>"; }
    return "<table id=\"" + id + "\"><thead><tr>" + head.map(function (h) {
      return "<th>" + esc(h) + "</th>";
    }).join("") + "</tr></thead><tbody>" + rows.map(function (r) {
      return "<tr>" + r.map(function (c) { return "<td>" + c + "</td>"; }).join("") + "</tr>";
    }).join("") + "</tbody></table>";
  }
  function compare(ta, tb) {
    var a = byTag(ta), b = byTag(tb), out = document.getElementById("compare-out");
    if (!a || !b) { out.innerHTML = "<p>Pick two versions.</p>"; return; }
    var mrows = keys(a.metrics, b.metrics).map(function (k) {
      var x = a.metrics[k], y = b.metrics[k], d = "-", cls = "";
      if (typeof x === "number" && typeof y === "number") {
        var delta = y - x;
        d = (delta >= 0 ? "+" : "") + fmt(delta);
        var better = data.mode === "min" ? delta < 0 : delta > 0;
        cls = delta === 0 ? "" : (k === data.metric ? (better ? "up" : "down") : "");
      }
      return [esc(k), esc(fmt(x)), esc(fmt(y)), "<span class=\"" + cls + "\">" + esc(d) + "</span>"];
    });
    var prows = keys(a.params, b.params).filter(function (k) {
      return fmt(a.params[k]) !== fmt(b.params[k]);
    }).map(function (k) { return [esc(k), esc(fmt(a.params[k])), esc(fmt(b.params[k]))]; });
    var drows = keys(a.data, b.data).filter(function (k) {
      return (a.data[k] || null) !== (b.data[k] || null);
    }).map(function (k) {
      return ["<code>" + esc(k) + "</code>", "<code>" + esc(a.data[k] || "absent") + "</code>",
              "<code>" + esc(b.data[k] || "absent") + "</code>"];
    });
    out.innerHTML = "<p id=\"compare-title\"><b>" + esc(a.tag) + "</b> &rarr; <b>" +
      esc(b.tag) + "</b> (best runs " + esc(a.best_run || "-") + " &rarr; " +
      esc(b.best_run || "-") + ")</p><h3>Metrics</h3>" +
      table("compare-metrics", ["metric", a.tag, b.tag, "delta"], mrows) +
      "<h3>Params changed</h3>" + table("compare-params", ["param", a.tag, b.tag], prows) +
      "<h3>Data changed (DVC md5)</h3>" + table("compare-data", ["path", a.tag, b.tag], drows);
  }
  var sa = document.getElementById("cmp-a"), sb = document.getElementById("cmp-b");
  var pair = data.default_pair;
  var m = /compare=([^,&]+),([^,&]+)/.exec(decodeURIComponent(location.hash || ""));
  if (m) { pair = [m[1], m[2]]; }
  if (pair.length === 2) { sa.value = pair[0]; sb.value = pair[1]; compare(pair[0], pair[1]); }
  function update() { compare(sa.value, sb.value); }
  sa.addEventListener("change", update);
  sb.addEventListener("change", update);
})();
"""
