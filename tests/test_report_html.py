"""`gemma-ref compare --html`: the page is parsed back, and its numbers are the ones `--json` prints."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from gemma_ref import Model
from gemma_ref import reference as R
from gemma_ref import report_html
from gemma_ref.cli import main
from test_reference import write_tiny


class Page(HTMLParser):
    """Collects the elements the tests read: heatmap cells, table rows, marks, embedded JSON."""

    def __init__(self):
        super().__init__()
        self.cells, self.first, self.rows, self.tables, self.texts = [], [], [], [], []
        self.script, self._in_script, self._table, self._row = None, False, None, None
        self.svg = None  # (kind, prompt) of the heatmap being read

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and "data-prompt" in a:
            self.svg = (a["data-kind"], int(a["data-prompt"]))
        if tag == "rect" and "data-rel" in a:
            self.cells.append((*self.svg, a["data-row"], int(a["data-pos"]),
                               float(a["data-rel"]), float(a["data-abs"])))
        if tag == "rect" and a.get("class") == "first-divergence":
            self.first.append((*self.svg, a["data-row"], int(a["data-pos"])))
        if tag == "table":
            self._table = a.get("class")
            self.tables.append(self._table)
        if tag == "tr" and "data-name" in a:
            self._row = [self._table, a["data-name"], []]
            self.rows.append(self._row)
        if tag == "td" and "data-value" in a and self._row is not None:
            v = a["data-value"]
            self._row[2].append(None if v == "" else json.loads(v) if v[0].isdigit() or v[0] == "-"
                                else v)
        if tag == "script" and a.get("id") == "gemma-ref-report":
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script = (self.script or "") + data
        else:
            self.texts.append(data)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """A golden (with traces) and a dump of the same model with one weight of layer 1 changed."""
    d = tmp_path_factory.mktemp("html")
    model = Model.from_pretrained(write_tiny(d / "tiny"))
    prompts = ["Hello world", "The quick brown fox jumps over the lazy dog again"]
    golden = R.dump(model, prompts, trace=True, max_new_tokens=6)
    w = dict(model.weights.arrays)
    w["model.layers.1.mlp.down_proj.weight"] = w["model.layers.1.mlp.down_proj.weight"].copy()
    w["model.layers.1.mlp.down_proj.weight"][3, 5] += 0.5
    bad = Model(model.config, w, model.tokenizer, source="perturbed")
    other = R.dump(bad, prompts, trace=True, max_new_tokens=6)
    R.save(golden, d / "golden.npz")
    R.save(other, d / "other.npz")
    return d


def test_html_numbers_are_those_of_json(dumps, capsys):
    page_file = dumps / "report.html"
    code = main(["compare", str(dumps / "golden.npz"), str(dumps / "other.npz"), "--json",
                 "--html", str(page_file)])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and not report["ok"]
    page = Page()
    page.feed(page_file.read_text(encoding="utf-8"))

    # the heatmaps: one cell per (prompt, hidden state or intermediate, position), with the
    # report's errors; the first divergences marked where the report says
    expected, marked = [], []
    for p in report["prompts"]:
        for kind, key, first in (("hidden", "hidden_states", "first_divergence"),
                                 ("trace", "trace", "first_trace_divergence")):
            expected += [(kind, p["prompt"], e["name"], t, rel, ab) for e in p[key]
                         for t, (rel, ab) in enumerate(zip(e["rel"], e["abs"]))]
            if p[first]:
                marked.append((kind, p["prompt"], p[first]["name"], p[first]["position"]))
    assert page.cells == expected
    assert page.first == marked
    assert {name for kind, _, name, _ in marked if kind == "hidden"} == {"model.layers.1"}  # the perturbed layer
    assert {name for kind, _, name, _ in marked if kind == "trace"} == {"model.layers.1.mlp"}
    # tables: per hidden state and per traced intermediate, in the report's order and values
    for kind, key in (("hidden", "hidden_states"), ("trace", "trace")):
        rows = [(name, values) for table, name, values in page.rows if table == kind]
        want = [(e["name"], [e["max_abs"], e["max_rel"], e["worst_position"], e["first_bad_position"]])
                for p in report["prompts"] for e in p[key]]
        assert rows == want and rows
    summary = [(name, v) for table, name, v in page.rows if table == "summary"]
    assert summary == [(f"prompt-{p['prompt']}", [p["tokens"], next(
        e["max_rel"] for e in p["hidden_states"] if e["name"].startswith("logits"))])
        for p in report["prompts"]]
    agreement = {(name, tuple(v)) for table, name, v in page.rows if table == "agreement"}
    p0 = report["prompts"][0]
    assert ("greedy", (p0["greedy"]["agree"], p0["greedy"]["total"], p0["greedy"]["first_mismatch"])) in agreement
    assert ("topk_overlap", (p0["topk_overlap"]["mean"], p0["topk_overlap"]["min"])) in agreement
    # the visible text: verdict, first trace divergence, provenance of both sides
    text = " ".join(page.texts)
    assert "FAIL" in text and p0["first_trace_divergence"]["name"] == "model.layers.1.mlp"
    assert "model.layers.1.mlp" in text and report["other"]["provenance"]["model"] in text
    assert report["golden"]["provenance"]["created"] in text
    assert json.loads(page.script) == report  # the whole report travels with the page


def test_page_is_self_contained_and_escapes_text(dumps):
    golden = R.load(dumps / "golden.npz")
    golden.prompts[0].text = "</script><b>x</b> & \"q\""
    page = report_html.render(R.compare(golden, golden))
    assert "<b>x</b>" not in page and "&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in page
    assert page.count("</script>") == 1  # the embedded JSON cannot close its own tag
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "src=" not in page and "<link" not in page  # nothing to fetch


def test_rows_with_some_positions_only(dumps):
    golden = R.load(dumps / "golden.npz")
    d = golden.prompts[1]
    d.positions, d.logits = np.array([1, 3, 4]), d.logits[[1, 3, 4]]  # logits of three positions
    report = R.compare(golden, R.load(dumps / "other.npz"))
    page = Page()
    page.feed(report_html.render(report))
    logits_cells = [(t, rel) for kind, p, name, t, rel, _ in page.cells
                    if kind == "hidden" and p == 1 and name.startswith("logits")]
    entry = next(e for e in report["prompts"][1]["hidden_states"] if e["name"].startswith("logits"))
    assert [t for t, _ in logits_cells] == [1, 3, 4]
    assert [rel for _, rel in logits_cells] == [entry["rel"][t] for t in (1, 3, 4)]


def test_colours_order_by_error():
    rtol = 1e-3
    cols = [report_html.colour(v, rtol) for v in (1e-12, 1e-6, 1e-3, 2e-3, 1e-1, 10.0)]
    assert len(set(cols)) == len(cols)
    assert report_html.colour(float("nan"), rtol) == report_html.colour(1.0, rtol)  # NaN looks bad
    red = [int(c[1:3], 16) - int(c[5:7], 16) for c in cols]  # red minus blue: grows with the error
    assert red[3] > red[0] and red[4] > 0


def test_unwritable_html_is_one_line_and_exit_2(dumps, capsys):
    code = main(["compare", str(dumps / "golden.npz"), str(dumps / "golden.npz"),
                 "--html", str(dumps / "no-such-dir" / "r.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gemma-ref: error: ") and "cannot write" in err[0]
