"""`baseline data review EXPERIMENT`: one self-contained HTML page beside the audit's label_issues.csv
(opens from disk, no server) where a person decides the flagged gender and age labels: each flagged
person's seven photos, the given and the suggested label, the score and whether the audit is sure;
accept, reject or type another value (buttons or keys); the sure flags start accepted. Its download
button writes the decisions as a data.corrections file (`id,field,value`) that `make cv` takes as it is."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps

from . import files
from .audit import corrections, trained_edges
from .config import Config, ConfigError
from .data.layouts import read_table

THUMB = 128  # thumbnail height in pixels
PAGE = "label_review.html"


def thumbnail(path: str) -> str:
    """A small JPEG of the photo as a data: URL, so the page needs no other file."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((THUMB * 2, THUMB))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def flags(experiment: Path) -> pd.DataFrame:
    issues = experiment / "label_issues.csv"
    if not issues.is_file():
        raise ConfigError(f"data review: no {issues}; run `baseline data audit {experiment}` first")
    found = pd.read_csv(issues, dtype={"id": str})
    if "id" not in found.columns:
        raise ConfigError(f"data review: {issues} lists images, not people: the review page is for the mask layout "
                          "(fix csv/folder labels in their CSV)")
    return found[found["field"].isin(["gender", "age"])].reset_index(drop=True)


def cards(cfg: Config, experiment: Path) -> list[dict]:
    """One card per flagged (person, field): photos, given, suggested, the value accepting writes, score, sure."""
    found, table = flags(experiment), read_table(cfg)
    proposed = corrections(found.assign(sure=True), table, trained_edges([experiment]))
    value = {(str(r.id), r.field): str(r.value) for r in proposed.itertuples()}
    photos = table.df.assign(group=table.df["group"].astype(str)).groupby("group")["path"].apply(list)
    return [{"id": str(r.id), "field": r.field, "given": str(r.given), "suggested": str(r.suggested),
             "value": value[str(r.id), r.field], "score": float(r.score), "sure": bool(r.sure),
             "photos": [thumbnail(p) for p in sorted(photos.get(str(r.id), []))]} for r in found.itertuples()]


def write(cfg: Config, experiment: str | Path) -> tuple[Path, int]:
    """The page beside label_issues.csv; its path and how many flags it holds."""
    experiment = Path(experiment)
    items = cards(cfg, experiment)
    out = experiment / PAGE
    files.write_text(out, page(items, experiment.name))
    return out, len(items)


def page(items: list[dict], title: str) -> str:
    data = json.dumps(items).replace("</", "<\\/")  # no </script> inside the data
    return TEMPLATE.replace("{{title}}", html.escape(title)).replace("{{data}}", data)


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>label review: {{title}}</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
.card { border: 2px solid #ddd; border-radius: 6px; padding: .6em; margin: .6em 0; outline: none; }
.card:focus { border-color: #4a7bd0; }
.card.accept { background: #eaf7ee; } .card.reject { background: #f8ecec; } .card.other { background: #fdf6e3; }
.photos img { height: 128px; margin-right: 4px; border-radius: 3px; }
.sure { color: #1d7a3a; font-weight: 600; } .unsure { color: #a36100; }
button { margin-right: .4em; } input { width: 7em; }
#bar { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ddd; }
</style></head>
<body>
<div id="bar"><b>label review: {{title}}</b> &middot; <span id="count"></span> &middot;
keys on a card: <kbd>a</kbd> accept, <kbd>r</kbd> reject, <kbd>e</kbd> another value,
<kbd>j</kbd>/<kbd>k</kbd> next/previous &middot; <button id="download">download corrections.csv</button></div>
<div id="cards"></div>
<script type="application/json" id="flags">{{data}}</script>
<script>
const flags = JSON.parse(document.getElementById("flags").textContent);
const decision = flags.map(f => f.sure ? "accept" : "reject");  // the sure flags start accepted
const other = flags.map(() => "");

function render(i) {
  const card = document.querySelector(`[data-row="${i}"]`);
  card.className = "card " + decision[i];
  card.querySelector(".state").textContent =
    decision[i] === "accept" ? `corrects ${flags[i].field} to ${flags[i].value}` :
    decision[i] === "other" ? `corrects ${flags[i].field} to ${other[i]}` : "keeps the given label";
  const n = decision.filter(d => d !== "reject").length;
  document.getElementById("count").textContent = `${flags.length} flags, ${n} to correct`;
}

function decide(i, what) {
  if (what === "other") {
    const value = document.querySelector(`[data-row="${i}"] input`).value.trim();
    if (!value) return;
    other[i] = value;
  }
  decision[i] = what;
  render(i);
}

function csv() {
  const rows = ["id,field,value"];
  flags.forEach((f, i) => {
    if (decision[i] === "accept") rows.push(`${f.id},${f.field},${f.value}`);
    if (decision[i] === "other") rows.push(`${f.id},${f.field},${other[i]}`);
  });
  return rows.join("\\n") + "\\n";
}

function download() {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([csv()], {type: "text/csv"}));
  a.download = "corrections.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

const list = document.getElementById("cards");
flags.forEach((f, i) => {
  const card = document.createElement("div");
  card.dataset.row = i;
  card.tabIndex = 0;
  const sure = f.sure ? '<span class="sure">sure</span>' : '<span class="unsure">not sure</span>';
  card.innerHTML = `<div><b>${f.id}</b> ${f.field}: given <b>${f.given}</b>, suggested <b>${f.suggested}</b>
    (score ${f.score.toFixed(2)}, ${sure}) &middot; <span class="state"></span></div>
    <div class="photos">${f.photos.map(p => `<img src="${p}">`).join("")}</div>
    <button class="accept">accept (a)</button><button class="reject">reject (r)</button>
    <input placeholder="another value"><button class="other">use it (e)</button>`;
  card.querySelector("button.accept").onclick = () => decide(i, "accept");
  card.querySelector("button.reject").onclick = () => decide(i, "reject");
  card.querySelector("button.other").onclick = () => decide(i, "other");
  card.addEventListener("keydown", e => {
    if (e.target.tagName === "INPUT") { if (e.key === "Enter") decide(i, "other"); return; }
    const move = {j: 1, k: -1}[e.key];
    if (move) document.querySelector(`[data-row="${i + move}"]`)?.focus();
    if (e.key === "a") decide(i, "accept");
    if (e.key === "r") decide(i, "reject");
    if (e.key === "e") card.querySelector("input").focus();
    if (move || "are".includes(e.key)) e.preventDefault();
  });
  list.appendChild(card);
  render(i);
});
document.getElementById("download").onclick = download;
</script>
</body></html>
"""
