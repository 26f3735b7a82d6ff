"""experiments.py report: one self-contained HTML file, read as a parser and as a person.

The static half parses the file (every resource inline, every chart a decodable PNG, the
tables and the embedded data right); the browser half opens it in a real headless Chromium
(tests/browser_support.py): no console message at all, every version and metric on the
rendered page, the comparison rendered by the page's own script (also for a pair picked in
the URL, and after changing the selects), a header click sorting the table, and a
screenshot that is not blank.
"""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil

import pytest
from browser_support import blank_fraction, dump_dom, screenshot
from charts_support import COMMAND, DATA1, DATA2, F1, PROD_DVC, md5
from conftest import init_git, run_script, sh
from PIL import Image

TAGS = ["e0.1.0", "e0.2.0", "e1.0.0", "exp-forest-v1"]


class Page(html.parser.HTMLParser):
    """Every start tag with its attributes, the text, and the tables' rows by table id."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.scripts: list[tuple[dict, str]] = []
        self._table = None
        self._row = None
        self._cell = None
        self._script = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self._table = a.get("id", "")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "script":
            self._script = (a, [])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "script" and self._script:
            self.scripts.append((self._script[0], "".join(self._script[1])))
            self._script = None

    def handle_data(self, data):
        if self._script:
            self._script[1].append(data)
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def report(charts_hist, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    cp = run_script("experiments.py", "report", "--json", "-o", str(out),
                    cwd=charts_hist["repo"])
    assert cp.returncode == 0, cp.stderr
    return {"path": out, "res": json.loads(cp.stdout), "text": out.read_text("utf-8"),
            **charts_hist}


def test_report_is_one_file_with_nothing_external(report):
    page = parse(report["text"])
    res = report["res"]
    assert res["bytes"] == report["path"].stat().st_size < 400_000
    assert res["versions"] == 4 and res["ledger_entries"] == 4
    assert res["charts"] == ["versions", "sweep e0.2.0", "curves f1_score", "curves loss"]
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed"), tag
        if tag == "script":
            assert "src" not in attrs
        for k in ("src", "href", "srcset", "action", "data"):
            v = attrs.get(k) or ""
            assert not re.match(r"^(https?:|//|file:|ftp:)", v, re.I), (tag, k, v)
            if k == "href" and k in attrs:
                assert v.startswith("#"), v  # in-page links only
    assert not re.search(r"@import|url\(\s*['\"]?(https?:|//)", report["text"], re.I)
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert len(imgs) == len(res["charts"]) == 4
    total = 0
    for src in imgs:
        head, b64 = src.split(",", 1)
        assert head == "data:image/png;base64"
        data = base64.b64decode(b64, validate=True)
        total += len(data)
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.width == 1200 and img.height >= 500
    assert total == res["png_bytes"]


def test_versions_table_and_embedded_data(report):
    page = parse(report["text"])
    head, *rows = page.rows["versions"]
    assert head[:5] == ["tag", "date", "runs", "best run", "model"]
    assert head[5:9] == ["f1_score", "loss", "data", "production"]  # ranking metric first
    assert [r[0] for r in rows] == TAGS
    by_tag = {r[0]: dict(zip(head, r, strict=True)) for r in rows}
    for tag, f1 in F1.items():
        assert float(by_tag[tag]["f1_score"]) == f1
    assert by_tag["e0.2.0"]["runs"] == "4" and by_tag["e0.2.0"]["best run"] == \
        report["best_sweep"]
    assert {t: r["production"] for t, r in by_tag.items()} == {
        "e0.1.0": "promoted", "e0.2.0": "production", "e1.0.0": "promoted",
        "exp-forest-v1": "-"}
    assert by_tag["e1.0.0"]["data"] == md5(DATA2)[:6] and by_tag["e0.1.0"]["data"] == \
        md5(DATA1)[:6]
    (attrs, blob), = [(a, s) for a, s in page.scripts if a.get("type") == "application/json"]
    data = json.loads(blob)
    assert data["default_pair"] == ["e0.2.0", "e1.0.0"] and data["metric"] == "f1_score"
    v = {x["tag"]: x for x in data["versions"]}
    # epoch is a step column: no param (settings.is_step)
    assert v["e0.2.0"]["params"] == {"C": 1.0, "model": "logreg", "solver": "lbfgs"}
    assert v["e1.0.0"]["data"] == {"data/train.csv": md5(DATA2)}
    assert v["exp-forest-v1"]["version"] == "exp-forest"


def test_ledger_section_shows_actions_reasons_and_unknown_fields(report):
    page = parse(report["text"])
    head, *rows = page.rows["ledger"]
    assert head == ["seq", "time", "action", "version", "run_id", "reason", "alias", "f1_score",
                    "model md5", "other fields"]
    got = [dict(zip(head, r, strict=True)) for r in rows]
    assert [(g["action"], g["version"], g["reason"]) for g in got] == [
        ("promote", "e0.1.0", "baseline"), ("promote", "e0.2.0", "sweep winner"),
        ("promote", "e1.0.0", "-"), ("rollback", "e0.2.0", "regression in prod")]
    assert got[1]["alias"] == "champion" and got[0]["model md5"] == "a" * 12
    assert got[2]["f1_score"] == "0.91"
    assert [g["seq"] for g in got] == ["1", "2", "3", "4"]  # what rollback --to N takes
    assert json.loads(got[2]["other fields"]) == {"future_field": {"x": 1}}


def test_lineage_has_commit_data_md5s_and_command(report):
    text = report["text"]
    for tag, commit in report["commits"].items():
        block = re.search(rf'<details id="lineage-{re.escape(tag)}">(.*?)</details>', text,
                          re.S)
        assert block, tag
        assert f"<code>{commit}</code>" in block.group(1)
        data = md5(DATA2) if tag == "e1.0.0" else md5(DATA1)
        assert f"<code>data/train.csv</code> md5 <code>{data}</code>" in block.group(1)
        cmd = COMMAND if tag == "e1.0.0" else "not recorded"
        assert f"command: <code>{cmd}</code>" in block.group(1)


def test_report_refuses_existing_and_dry_run_writes_nothing(charts_hist, tmp_path):
    dest = tmp_path / "r.html"
    cp = run_script("experiments.py", "report", "--json", "--dry-run", "-o", str(dest),
                    cwd=charts_hist["repo"])
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["dry_run"] is True and out["bytes"] > 10_000 and not dest.exists()
    dest.write_text("mine")
    cp = run_script("experiments.py", "report", "-o", str(dest), cwd=charts_hist["repo"])
    assert cp.returncode == 4 and dest.read_text() == "mine"


def test_report_of_a_short_history_and_a_damaged_ledger(tmp_path):
    """One version, a ledger with a broken line: a report still, saying what it lacks."""
    from xetrack import Tracker

    repo = init_git(tmp_path / "p")
    Tracker(str(repo / "results/experiments.db"), params={"version": "e0.1.0"}).log(
        {"f1_score": 0.5})
    sh("git add -A && git commit -q -m r", cwd=repo)
    sh(["git", "tag", "-a", "e0.1.0", "-m", 'f1_score=0.5 | <img src=x onerror="alert(1)">'],
       cwd=repo)
    led = repo / "models" / "production" / "ledger.jsonl"
    led.parent.mkdir(parents=True)
    led.write_text('{"action": "promote", "version": "e0.1.0"}\nnot json\n')
    cp = run_script("experiments.py", "report", "--json", "-o", str(tmp_path / "r.html"),
                    cwd=repo)
    assert cp.returncode == 0, cp.stderr
    out = json.loads(cp.stdout)
    assert out["versions"] == 1 and out["charts"] == [] and out["ledger_entries"] == 0
    assert out["notes"] == ["versions chart: only one version has a f1_score: e0.1.0 "
                            "f1_score=0.5; a chart needs two; tag another version, or read "
                            "it with experiments.py show e0.1.0"]
    assert "production ledger not read (models/production/ledger.jsonl line 2 is not JSON" \
        in cp.stderr
    text = (tmp_path / "r.html").read_text()
    assert "only one version has a f1_score" in text and "e0.1.0" in text
    # a tag message is text, never markup: escaped in the table, the lineage and the JSON
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert [t for t, _a in parse(text).tags].count("img") == 0


def test_production_and_the_ledger_are_what_status_reads(charts_hist, tmp_path):
    """The report and the versions chart mark as production what `model_manager.py status`
    says production holds: the ledger's last state (read from the working tree, where the
    fixture's ledger is not committed yet: the report says so) only while model.bin.dvc
    names its model. A model put there by hand (e0.1.0's md5) marks no version, with one
    warning line, and status agrees (no run, not in the ledger)."""
    repo = shutil.copytree(charts_hist["repo"], tmp_path / "proj", symlinks=True)

    def status() -> tuple:
        cp = run_script("model_manager.py", "status", "--json", cwd=repo)
        assert cp.returncode == 0, cp.stderr
        st = json.loads(cp.stdout)["production"]
        return st["run_id"], st["in_ledger"]

    def report(n: int) -> tuple:
        out = tmp_path / f"r{n}.html"
        cp = run_script("experiments.py", "report", "--json", "-o", str(out), cwd=repo)
        assert cp.returncode == 0, cp.stderr
        text = out.read_text("utf-8")
        head, *rows = parse(text).rows["versions"]
        marks = {r[0]: r[head.index("production")] for r in rows}
        return marks, json.loads(cp.stdout), cp.stderr, text

    assert status() == (charts_hist["best_sweep"], True)
    marks, res, err, text = report(1)
    assert marks == {"e0.1.0": "promoted", "e0.2.0": "production", "e1.0.0": "promoted",
                     "exp-forest-v1": "-"}
    assert err == "" and res["ledger_uncommitted"] is True
    assert ('<p class="note" id="ledger-state">models/production/ledger.jsonl as in the '
            "working tree, with changes not committed yet (what model_manager.py status and "
            "history show; git diff shows them)</p>") in text
    (repo / "models/production/model.bin.dvc").write_text(PROD_DVC.format(md5="a" * 32))
    assert status() == (None, False)
    marks, res, err, _ = report(2)
    assert marks == {"e0.1.0": "promoted", "e0.2.0": "promoted", "e1.0.0": "promoted",
                     "exp-forest-v1": "-"}
    cp = run_script("experiments.py", "plot", "--json", "-o", str(tmp_path / "v.png"),
                    cwd=repo)
    assert cp.returncode == 0, cp.stderr
    assert [t for t, x in json.loads(cp.stdout)["series"].items() if x["production"]] == []
    line = ("warning: models/production/model.bin (md5 " + "a" * 32 + ") is not the "
            "production model of models/production/ledger.jsonl (changed outside "
            "model_manager.py; see model_manager.py status): no version is charted as "
            "production")
    assert err.splitlines() == [f"experiments.py: {line}"] and cp.stderr == err
    sh("git add -A models && git commit -q -m ledger", cwd=repo)
    _, res, _, text = report(3)
    assert res["ledger_uncommitted"] is False and 'id="ledger-state"' not in text


# --- in a real browser --------------------------------------------------------------------

def _visible_text(dom: str) -> str:
    page = parse(dom)
    return " ".join(" ".join(page.text).split())


def test_browser_renders_every_version_and_metric_without_console_errors(report):
    r = dump_dom(report["path"])
    assert r.console == []
    page = parse(r.stdout)
    text = _visible_text(r.stdout)
    for tag in TAGS:
        assert tag in text
    head, *rows = page.rows["versions"]
    for metric in ("f1_score", "loss"):
        assert metric in head
    for f1 in F1.values():
        assert f"{f1:g}" in [c for row in rows for c in row]
    # the page's script rendered the default comparison: e0.2.0 -> e1.0.0
    assert "e0.2.0 → e1.0.0" in text
    cmp = {row[0]: row[1:] for row in page.rows["compare-metrics"][1:]}
    assert cmp["f1_score"] == ["0.88", "0.91", "+0.03"]
    assert page.rows["compare-data"][1:] == [["data/train.csv", md5(DATA1), md5(DATA2)]]
    assert "compare-params" not in page.rows  # the same params: a line says so
    assert '<p id="compare-params">none changed</p>' in r.stdout
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) == 4


def test_browser_compare_any_pair_sort_and_select(report, tmp_path):
    """A copy of the report with a script a person's clicks would run, appended."""
    head = parse(report["text"]).rows["versions"][0]
    f1_col = head.index("f1_score")
    clicks = f"""<script>
var th = document.querySelector('#versions th[data-col="{f1_col}"]');
th.click(); th.click();  /* descending by f1_score */
var a = document.getElementById("cmp-a"), b = document.getElementById("cmp-b");
a.value = "e0.1.0"; b.value = "e0.2.0";
b.dispatchEvent(new Event("change"));
</script></body>"""
    page_file = tmp_path / "clicked.html"
    page_file.write_text(report["text"].replace("</body>", clicks))
    r = dump_dom(page_file)
    assert r.console == []
    page = parse(r.stdout)
    order = [row[0] for row in page.rows["versions"][1:]]
    assert order == sorted(TAGS, key=lambda t: -F1[t])
    assert "e0.1.0 → e0.2.0" in _visible_text(r.stdout)
    cmp = {row[0]: row[1:] for row in page.rows["compare-metrics"][1:]}
    assert cmp["f1_score"] == ["0.8", "0.88", "+0.08"]
    assert '<p id="compare-data">none changed</p>' in r.stdout  # the same data md5
    # and a pair named in the URL: #compare=A,B (what a CI link can point at)
    r = dump_dom(report["path"], fragment="compare=e0.1.0,exp-forest-v1")
    assert r.console == []
    page = parse(r.stdout)
    changed = {row[0]: row[1:] for row in page.rows["compare-params"][1:]}
    assert changed == {"model": ["logreg", "forest"]}


def test_console_check_and_blank_check_can_fail(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>nosuch();</script></body></html>")
    r = dump_dom(bad)
    assert len(r.console) == 1 and "nosuch is not defined" in r.console[0]
    shot = tmp_path / "bad.png"
    screenshot(bad, shot, 800, 600)
    share, _ = blank_fraction(shot)
    assert share == 1.0


def test_browser_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "report.png"
    r = screenshot(report["path"], shot)
    assert r.console == []
    img = Image.open(shot)
    assert img.size == (1280, 2000)
    share, colors = blank_fraction(shot)
    assert share < 0.9 and colors > 200, (share, colors)
