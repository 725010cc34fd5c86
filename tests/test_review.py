"""`baseline data review EXPERIMENT`: the page opens from disk in headless Chromium; rejecting one flag and
accepting another, then its download button, gives exactly the corrections clicked (sure flags pre-accepted),
and `make cv` takes that file as it is."""

import html
import re
import subprocess

import pandas as pd
import pytest

from baseline.cli import main
from baseline.config import load_config
from baseline.data.layouts import read_table
from tests.test_sweep_dashboard import browser

HARNESS = """<script>
window.addEventListener("load", async () => {
  const blobs = [];
  URL.createObjectURL = blob => { blobs.push(blob); return "#"; };
  document.querySelector('[data-row="0"] button.reject').click();
  document.querySelector('[data-row="1"] button.accept').click();
  const typed = document.querySelector('[data-row="2"] input');
  typed.value = "41";
  document.querySelector('[data-row="2"] button.other').click();
  document.getElementById("download").click();
  const out = document.createElement("pre");
  out.id = "downloaded";
  out.textContent = await blobs[0].text();
  document.body.appendChild(out);
});
</script>"""


def issues(root):
    """Four hand-made flags on real people of the built-in data: row 0 sure (the click rejects it), row 1 not
    sure (the click accepts it), row 2 typed over, row 3 sure (left as pre-accepted)."""
    people = read_table(load_config(None, [f"data.root={root}"])).df.drop_duplicates("group")
    ids = people["group"].astype(str).tolist()[:4]
    genders = ["female" if g else "male" for g in people["gender"].tolist()[:4]]
    flip = {"male": "female", "female": "male"}
    rows = [(ids[0], "gender", genders[0], flip[genders[0]], 0.9, True), (ids[1], "age", "<30", ">=60", 0.7, False),
            (ids[2], "age", "30-59", "<30", 0.65, False), (ids[3], "gender", genders[3], flip[genders[3]], 0.95, True)]
    columns = ["id", "field", "given", "suggested", "score", "sure"]
    return pd.DataFrame(rows, columns=columns).assign(path=""), ids, flip[genders[3]]


@pytest.mark.slow
def test_the_page_downloads_what_was_clicked_and_cv_takes_it(synth_copy, tmp_path, capsys):
    chrome = browser()
    exp = tmp_path / "runs" / "exp"
    exp.mkdir(parents=True)
    found, ids, fourth = issues(synth_copy)
    found.to_csv(exp / "label_issues.csv", index=False)
    assert main(["data", "review", str(exp), f"data.root={synth_copy}"]) == 0
    assert "4 flag(s) to decide" in capsys.readouterr().out
    page = (exp / "label_review.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 * 7  # every flagged person's seven photos, in the page
    harness = tmp_path / "harness.html"
    harness.write_text(page.replace("</body>", HARNESS + "</body>"))
    dom = subprocess.run([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=10000", "--dump-dom", harness.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    downloaded = re.search(r'<pre id="downloaded">(.*?)</pre>', dom, re.S)
    assert downloaded, dom[-2000:]
    got = html.unescape(downloaded.group(1))
    age = int(read_table(load_config(None, [f"data.root={synth_copy}"])).df.set_index("group").loc[ids[1], "age"]
              .iloc[0])
    expected = f"id,field,value\n{ids[1]},age,{max(age, 60)}\n{ids[2]},age,41\n{ids[3]},gender,{fourth}\n"
    assert got == expected
    fixes = tmp_path / "corrections.csv"
    fixes.write_text(got)
    table = read_table(load_config(None, [f"data.root={synth_copy}", f"data.corrections={fixes}"]))
    people = table.df.drop_duplicates("group").set_index("group")
    assert people.loc[ids[2], "age"] == 41 and people.loc[ids[1], "age"] == max(age, 60)
