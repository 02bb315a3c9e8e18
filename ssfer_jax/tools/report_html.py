"""The HTML building blocks of ``ssfer_jax.tools.report``: its inline style sheet, escaping,
number formatting, tables and inlined figures. The page stands alone: no script, nothing
fetched, figures as base64 ``data:`` URIs.
"""

from __future__ import annotations

import html
from typing import Sequence

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1240px; padding: 16px 24px 48px; color: #1d2330;
       background: #fff; line-height: 1.45; font-size: 14px; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 36px 0 6px; padding-top: 10px; border-top: 2px solid #d8dde6; }
h3 { font-size: 15px; margin: 20px 0 6px; color: #364152; }
.meta { color: #5b6474; margin: 0 0 10px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dde6; padding: 4px 10px; text-align: right; }
th { background: #f1f3f7; font-weight: 600; }
td.l, th.l { text-align: left; }
tr.best td { background: #eef7ee; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; border: 1px solid #e3e6ec; border-radius: 4px; padding: 6px; background: #fff;
         box-sizing: border-box; flex: 0 1 calc(50% - 5px); }
figure.cm { flex: 0 1 auto; }
figure img { display: block; width: 100%; height: auto; }
figure.cm img { width: auto; max-width: 100%; }
figcaption { font-size: 12px; color: #5b6474; margin-top: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #2a5db0; }
pre { background: #f6f8fa; border: 1px solid #e3e6ec; padding: 8px; font-size: 12px;
      overflow-x: auto; max-height: 480px; }
.note { color: #7a5b00; background: #fff8e1; border: 1px solid #f0dca0; padding: 4px 8px;
        display: inline-block; border-radius: 3px; }
nav a { margin-right: 14px; color: #2a5db0; }
"""


def e(x) -> str:
  return html.escape(str(x), quote=True)


def fmt(v, digits: int = 4) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def img(b64: str, alt: str) -> str:
  return f'<img alt="{e(alt)}" src="data:image/png;base64,{b64}">'


def figure(title: str, b64: str, caption: bool = False, cls: str = "") -> str:
  """A figure; the chart PNGs carry their title, so a caption is only added on request."""
  cap = f"<figcaption>{e(title)}</figcaption>" if caption else ""
  attr = f' class="{cls}"' if cls else ""
  return f"<figure{attr}>{img(b64, title)}{cap}</figure>"


def table(header: Sequence[str], rows: Sequence[Sequence], left: int = 1,
           row_classes: Sequence[str] | None = None) -> str:
  """``left``: how many leading columns are text (left-aligned)."""
  out = ["<table><tr>" + "".join(
      f'<th class="{"l" if i < left else ""}">{e(h)}</th>' for i, h in enumerate(header)) + "</tr>"]
  for k, row in enumerate(rows):
    cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
    out.append(f"<tr{cls}>" + "".join(
        f'<td class="{"l" if i < left else ""}">{e(fmt(v))}</td>' for i, v in enumerate(row))
        + "</tr>")
  return "\n".join(out) + "</table>"
