"""Report files from results.json: report.md, a self-contained report.html, pareto.png and sample grids."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from fewstep.core.fsio import atomic_write, atomic_write_text
from fewstep.core.imaging import captioned_grid, make_grid, save_png

COLUMNS = ("system", "runs on", "steps", "NFE", "FID", "KID x1e3", "adherence", "p50 ms b1",
           "p99 ms b1", "images/s", "MB", "peak RSS MB", "Pareto", "vs teacher, equal steps")  # fmt: skip


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def table_rows(result: dict) -> list[list[str]]:
    """One row per measured system, fastest first (the cells of the Markdown and HTML tables)."""
    ok = sorted((r for r in result["systems"] if r["status"] == "ok"), key=lambda r: r["latency_b1"]["p50_ms"])
    rows = []
    for r in ok:
        rows.append([
            r["name"], runs_on(r), str(r["steps"]), str(r["nfe"]), _num(r["fid"], ".2f"),
            _num(1e3 * r["kid_mean"], ".2f"), "-" if r.get("adherence") is None else f"{100 * r['adherence']:.1f}%",
            _num(r["latency_b1"]["p50_ms"], ".1f"), _num(r["latency_b1"]["p99_ms"], ".1f"),
            _num(r["images_per_s"], ".1f"), "-" if r.get("size_bytes") is None else f"{r['size_bytes'] / 1e6:.2f}",
            _num(r.get("peak_rss_mb"), ".0f"), " ".join("FID" if p == "fid" else "adh." for p in r["pareto"]) or "",
            r.get("verdict") or "-",
        ])  # fmt: skip
    return rows


def runs_on(r: dict) -> str:
    """'torch' or the engine id (e.g. onnx-int8-nncf: two int8 engines of one backend differ by quantizer)."""
    return r.get("engine") or r.get("backend", "?")


def not_measured(result: dict) -> list[dict]:
    return [r for r in result["systems"] if r["status"] != "ok"]


def _header(result: dict) -> list[str]:
    m, ref = result["machine"], result.get("reference", {})
    lat = result["sweep"]["latency"]
    lines = [
        f"Machine: {m.get('cpu', '?')} ({', '.join(m.get('isa', []))}), {m.get('cores')} cores; {m.get('platform')}.",
        f"Quality: {ref.get('images', '?')} prompts of `{ref.get('dataset', '?')}`, prompt i with seed i for every "
        f"system; {result.get('feature_space', '?')}; adherence: {ref.get('adherence', '?')}.",
        f"Latency: end-to-end batch-1 requests (text encoding, every step, conversion to 8-bit RGB), "
        f"{lat['warmup']} warm-up + {lat['runs']} timed, {lat['threads']} threads; images/s from the quality pass "
        f"at batch {lat['batch']}; peak RSS of a fresh process making one image; MB = the model file or engine.",
    ]
    if result.get("real_vs_real"):
        lines.append(f"Real-vs-real floor (a second real set): FID {result['real_vs_real']['fid']:.2f}.")
    if result.get("command"):
        lines.append(f"Reproduce: `{result['command']}`.")
    return lines


def render_markdown(result: dict, pareto_png: str | None, side_by_side: str | None) -> str:
    out = [f"# fewstep report: {result['sweep']['name']}", "", *[f"{ln}  " for ln in _header(result)], ""]
    if pareto_png:
        out += [f"![latency vs quality]({pareto_png})", ""]
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row) + " |" for row in table_rows(result)]
    out += ["", "Pareto: on the frontier of batch-1 p50 latency vs FID (lower both) and/or vs adherence (higher).",
            "Domain FID alone can favour blurry images with the right colours; read it next to adherence and the "
            "samples.",
            "vs teacher, equal steps: the verdict `fewstep distill` measured for this very checkpoint (the student at "
            "its own steps against its teacher at as many; its verdict.json, or the bundle manifest's "
            "`model.equal_steps_verdict`)."]  # fmt: skip
    rest = not_measured(result)
    if rest:
        out += ["", "## Not measured", "", "| system | status | reason |", "|---|---|---|"]
        out += [f"| {r['label']} | {r['status']} | {r['reason'].replace('|', '/')[:300]} |" for r in rest]
    if side_by_side:
        out += ["", "## Samples (same prompts and seeds in every row)", "", f"![samples]({side_by_side})"]
    return "\n".join(out) + "\n"


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(result: dict, out: Path, pareto_png: Path | None, side_by_side: Path | None) -> str:
    """A single HTML file: the images are inlined, so it can be mailed or attached as it is."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in table_rows(result))
    rest = "".join(f"<tr><td>{esc(r['label'])}</td><td>{esc(r['status'])}</td><td>{esc(r['reason'][:400])}</td></tr>"
                   for r in not_measured(result))  # fmt: skip
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>fewstep report: {esc(result['sweep']['name'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}td:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>fewstep report: {esc(result['sweep']['name'])}</h1>",
        *[f"<p>{esc(ln)}</p>" for ln in _header(result)],
        _img_tag(pareto_png, "latency vs quality") if pareto_png else "",
        f"<table><tr>{head}</tr>{body}</table>",
        "<p>Pareto: on the frontier of batch-1 p50 latency vs FID (lower both) and/or vs adherence (higher).</p>",
    ]
    if rest:
        head_rest = "<tr><th>system</th><th>status</th><th>reason</th></tr>"
        parts.append(f"<h2>Not measured</h2><table>{head_rest}{rest}</table>")
    if side_by_side:
        parts += ["<h2>Samples (same prompts and seeds in every row)</h2>", _img_tag(side_by_side, "samples")]
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_pareto(result: dict, path: Path) -> Path | None:
    """Latency (log axis) vs FID and vs adherence, frontiers drawn; torch systems and frontier points labelled."""
    import matplotlib  # train extra
    import matplotlib.ticker  # train extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # train extra

    ok = [r for r in result["systems"] if r["status"] == "ok"]
    if not ok:
        return None
    has_adh = any(r.get("adherence") is not None for r in ok)
    fig, axes = plt.subplots(1, 2 if has_adh else 1, figsize=(14 if has_adh else 8, 6), squeeze=False)
    names = sorted({r["name"] for r in ok})
    colours = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    markers = {"torch": "o", "onnxruntime": "s", "openvino": "D", "coreml": "^", "tensorrt": "P"}
    panels = [("fid", result.get("feature_space", "FID"), 1.0)] + ([("adherence", "prompt adherence", 100.0)]
                                                                   if has_adh else [])  # fmt: skip
    for ax, (metric, label, scale) in zip(axes[0], panels, strict=True):
        pts = [r for r in ok if r.get(metric) is not None]
        for r in pts:
            x, y = r["latency_b1"]["p50_ms"], scale * r[metric]
            ax.scatter(x, y, color=colours[r["name"]], marker=markers.get(r["backend"], "o"), s=50, zorder=3,
                       edgecolors="black" if metric in r["pareto"] else "none")  # fmt: skip
            if metric in r["pareto"] or r["backend"] == "torch":  # engines off the frontier: in the table only
                ax.annotate(f"{r['name']} {r['steps']}s {_short(r)}", (x, y), fontsize=7, xytext=(4, 3),
                            textcoords="offset points")  # fmt: skip
        front = sorted((r for r in pts if metric in r["pareto"]), key=lambda r: r["latency_b1"]["p50_ms"])
        if front:
            ax.step([r["latency_b1"]["p50_ms"] for r in front], [scale * r[metric] for r in front], where="post",
                    color="black", linewidth=1, alpha=0.6, label="Pareto frontier", zorder=2)  # fmt: skip
        ax.set_xscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        sparse = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else "")
        ax.xaxis.set_minor_formatter(sparse)
        ax.set_xlabel("batch-1 latency, p50 (ms, log scale)")
        ax.set_ylabel(label + (" (%, higher is better)" if metric == "adherence" else " (lower is better)"))
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[n], marker="o", linestyle="", label=n) for n in names]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=b) for b, m in markers.items()
                if any(r["backend"] == b for r in ok)]  # fmt: skip
    axes[0][0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{result['sweep']['name']}: quality vs latency ({result['machine'].get('cpu', '')})", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _short(r: dict) -> str:
    return "" if r["backend"] == "torch" else runs_on(r)


def render_grids(result: dict, out: Path) -> Path | None:
    """A grid per system (samples/<id>.png) and one side-by-side grid: a row per system, same prompts and seeds."""
    rows, captions = [], []
    for r in sorted((r for r in result["systems"] if r["status"] == "ok"), key=lambda r: r["latency_b1"]["p50_ms"]):
        npy = out / r["samples"]
        if not npy.is_file():
            continue
        images = np.load(npy, allow_pickle=False)
        save_png(make_grid(images, nrow=len(images)), npy.with_suffix(".png"))
        rows.append(images)
        captions.append(f"{r['name']} {runs_on(r)} {r['steps']} step(s)")
    if not rows:
        return None
    n = min(len(x) for x in rows)
    return save_png(captioned_grid(np.concatenate([x[:n] for x in rows]), captions, nrow=n),
                    out / "samples_side_by_side.png")  # fmt: skip


def render_all(result: dict, out: Path) -> dict[str, Path]:
    pareto = plot_pareto(result, out / "pareto.png")
    grid = render_grids(result, out)
    atomic_write_text(out / "report.md", render_markdown(result, pareto and pareto.name, grid and grid.name))
    atomic_write_text(out / "report.html", render_html(result, out, pareto, grid))
    return {"results": out / "results.json", "report_md": out / "report.md", "report_html": out / "report.html",
            **({"pareto": pareto} if pareto else {}), **({"samples": grid} if grid else {})}  # fmt: skip
