"""worklist.html: the worklist as one static, self-contained page (no network, no external file but the
cases' own overview PNGs, linked relatively), sortable by clicking a column header.

Every cell is escaped (case names and paths come from users); a link to a case folder is only made for a
case id that is a safe file name (``cases.SAFE_NAME``) naming a folder that exists in the cohort folder.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from ..core.files import write_text_atomic
from .cases import SAFE_NAME
from .worklist import OUTSIDE_COLUMN, PREDICTED, STATUSES

WORKLIST_HTML = "worklist.html"
OVERVIEW = "overview.png"
HIDDEN = ("reviewed_at", "output")  # in the CSV; the page links the case folder instead

STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; }
th { background: #eee; cursor: pointer; position: sticky; top: 0; white-space: nowrap; }
th:hover { background: #ddd; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { width: 150px; display: block; }
td.reason { min-width: 18em; max-width: 30em; }
.done, .skipped, .within { background: #e3f4e3; }
.failed, .review { background: #f9d6d2; }
.undefined, .stale { background: #eee; color: #777; }
"""

# sort by the clicked column (numbers as numbers, empty last), toggling ascending / descending
SCRIPT = """
document.querySelectorAll("#worklist th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = document.querySelector("#worklist tbody"), asc = !th.classList.contains("asc");
    document.querySelectorAll("#worklist th").forEach(function (h) { h.classList.remove("asc", "desc"); });
    th.classList.add(asc ? "asc" : "desc");
    var key = function (row) {
      var c = row.cells[col];
      return c.dataset.sort !== undefined ? c.dataset.sort : c.textContent;
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

READING_CLASS = {"within the model's usual range": "within", "review recommended": "review",
                 "not defined": "undefined"}


def _cell(text: str, css: str = "", sort: str | None = None) -> str:
    attrs = (f' class="{css}"' if css else "") + (f' data-sort="{html.escape(sort)}"' if sort is not None else "")
    return f"<td{attrs}>{html.escape(text)}</td>"


def _case_cells(row: dict, root: Path) -> tuple[str, str]:
    """The thumbnail cell and the case cell (a link to its folder when it is safely one)."""
    case = row.get("case", "")
    folder_ok = SAFE_NAME.fullmatch(case) is not None and (root / case).is_dir() and row.get("status") != "failed"
    if not folder_ok:
        return "<td></td>", _cell(case)
    href = html.escape(quote(case) + "/")
    thumb = ""
    if (root / case / OVERVIEW).is_file():
        thumb = (f'<a href="{href}{OVERVIEW}"><img src="{href}{OVERVIEW}" loading="lazy" '
                 f'alt="overview of {html.escape(case)}"></a>')
    return f"<td>{thumb}</td>", f'<td data-sort="{html.escape(case)}"><a href="{href}">{html.escape(case)}</a></td>'


def render(rows: list[dict], columns: list[str], root: Path, title: str = "SegUncertainty worklist") -> str:
    """The page for ``rows`` (worklist.csv's rows, in rank order) of the cohort folder ``root``."""
    first = ["rank", "status", "priority", "reason", *(c for c in (OUTSIDE_COLUMN,) if c in columns)]
    per_class = [c for c in columns if ":" in c and not c.endswith(":reading")]
    shown = [*first, *per_class, *(c for c in columns if c not in (*first, *HIDDEN, "case") and ":" not in c)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["overview", "case", *shown])
    body = []
    for row in rows:
        thumb, case = _case_cells(row, root)
        cells = [thumb, case]
        for column in shown:
            value = row.get(column, "") or ""
            if column == "status":
                cells.append(_cell(value, html.escape(value) if value in STATUSES else ""))
            elif column == OUTSIDE_COLUMN:
                cells.append(_cell(value, "review" if value not in ("", "no") else "within" if value else ""))
            elif column.rsplit(":", 1)[-1] in PREDICTED:
                outside = row.get(OUTSIDE_COLUMN, "") not in ("", "no")
                cells.append(_cell(value, "num review" if outside and value else "num"))
            elif ":" in column and column.rsplit(":", 1)[1] != "volume_ml":
                reading = row.get(f"{column}:reading", "")
                css = READING_CLASS.get(reading, "")
                cells.append(f'<td class="num {css}" title="{html.escape(reading)}">{html.escape(value)}</td>')
            elif column in ("rank", "priority", "seconds") or column.endswith(":volume_ml"):
                cells.append(_cell(value, "num"))
            else:
                cells.append(_cell(value, "reason" if column in ("reason", "error") else ""))
        body.append("<tr>" + "".join(cells) + "</tr>")
    legend = ("Ranked by review priority (rank 1 first). Click a column header to sort. Score cells: green within "
              "the model's usual range, red review recommended, grey not defined (hover for the reading). "
              "Status stale: outputs of an earlier run with other settings (see method, model, samples), "
              "listed after this run's cases and not ranked with them. With a calibration: empty predictions, "
              "then cases outside the calibration data (red), then ascending lower bound of the predicted Dice; "
              "without one, by segment_entropy, the best uncalibrated failure detector measured.")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\'; '
            f'style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(legend)}</p>"
            f'<table id="worklist"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) +
            f"\n</tbody></table><script>{SCRIPT}</script></body></html>\n")


def write_html(rows: list[dict], columns: list[str], root: Path) -> Path:
    """Write ``root``/worklist.html whole or not at all (core.files.write_text_atomic); return its path."""
    path = root / WORKLIST_HTML
    write_text_atomic(path, render(rows, columns, root))
    return path
