"""The report page: the results table, the bar charts, the exchange-rate and quality tables, the sample
grids, report.md; and the CLI."""
from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from diffaug.cli import stage_parser
from diffaug.config import Img2ImgSet, load_config
from diffaug.errors import UserError, exit_on_error
from diffaug.io import atomic_path, write_bytes_atomic
from diffaug.report.figures import COMPARISONS, Context, Skip, bar_chart
from diffaug.report.results import SUMMARY, parse_exp_show, run_exp_show, select_rows

QUALITY = (("syn_fd", "Fréchet distance", ".2f"), ("syn_kid", "KID", ".4f"), ("syn_kid_se", "KID se", ".4f"),
           ("syn_precision", "precision", ".3f"), ("syn_recall", "recall", ".3f"))
CURVES = ("## Training curves\n\nEvery cell logs its epochs with dvclive under `metrics/train/<model>/<mix>/seed-<s>/` "
          "(train and validation loss and accuracy, lr). `dvc plots show` draws them with the other plots of "
          "dvc.yaml; `dvc plots diff <exp> ...` compares experiments.\n")


def copy_samples(ctx: Context, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Copy each synthetic set's samples.png into `out` (Fig. 8): ([report.md lines], [files written], [skip lines])."""
    body, copied, skipped = [], [], []
    for name, spec in ctx.cfg.synthetic.sets.items():
        src, file = ctx.synthetic / name / "samples.png", f"samples_{name}.png"
        if not src.is_file():
            why = f"{src} does not exist ({f'generate_img2img@{name}' if isinstance(spec, Img2ImgSet) else f'generate_{name}'} has not run here)"
            skipped.append(f"{file}: skipped: {why}")
            body.append(f"_Not included: {why}._\n")
            continue
        write_bytes_atomic(out / file, src.read_bytes())
        prompts = " / ".join(f"`{t}`" for t in spec.templates)
        how = (f"img2img from the real training images at strength {', '.join(f'{x:g}' for x in spec.strengths)}, "
               if isinstance(spec, Img2ImgSet) else "")
        body.append(f"{name}: {how}prompt {prompts}\n\n![samples_{name} sample grid]({file})\n")
        copied.append(file)
    return body, copied, skipped


def _sources(sources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sources.items())


def table_markdown(ctx: Context) -> tuple[str, list[str]]:
    """The paper's table: a row per experiment, a column per mixture, test accuracy in %, mean ± std with
    several seeds. The best of a column is bold (with several rows); '–': not trained in that experiment."""
    mixes = ctx.all_mixes()
    head = ["experiment", "model", "variant", "recipe", "seeds"] + [ctx.label(m) for m in mixes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 5 + "---:|" * len(mixes)]
    footnotes = []
    best = {m: max((r.acc[m] for r in ctx.rows if ctx.value(r, m) is not None), default=None) for m in mixes}
    for r in ctx.rows:
        cells = []
        for m in mixes:
            if m not in r.acc:
                cells.append("–")
                continue
            text = f"{r.acc[m] * 100:.2f}" + (f" ± {r.std[m] * 100:.2f}" if m in r.std else "")
            if ctx.redefined(r, m):
                text += " †"
                footnotes.append(f"† {r.display}: `{m}` was {_sources((r.mixtures or {})[m])} in that run, not "
                                 f"{_sources(ctx.cfg.mixtures[m])} as in params.yaml now; left out of the figures.")
            elif len(ctx.rows) > 1 and r.acc[m] == best[m]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([r.display, r.model, r.variant, r.recipe, str(r.seeds)] + cells) + " |")
    return "\n".join(lines), list(dict.fromkeys(footnotes))


def _num(value, fmt: str, none: str = "n/a", scale: float = 1) -> str:
    return none if not isinstance(value, int | float) else format(value * scale, fmt)


def exchange_table(summary: dict, mixes: Iterable[str]) -> list[str]:
    """Markdown rows: what each of `mixes` is worth in real images, from a summary.json (docs/worth.md)."""
    n_real, n_syn, equiv, std, rate, budget, acc = (summary.get(key) or {} for key in (
        "n_real", "n_syn", "real_equiv", "real_equiv_std", "syn_per_real", "equal_budget_acc", "test_acc"))
    out = ["| mixture | real | synthetic | test acc | real-equivalent | synthetic per real-equivalent | equal budget, real only |",
           "|---|---|---|---|---|---|---|"]
    for mix in mixes:
        eq = equiv.get(mix)
        eq_text = "beyond the curve" if eq is None else f"{eq:,.0f}" + (f" ± {std[mix]:,.0f}" if isinstance(std.get(mix), int | float) else "")
        total = (n_real.get(mix) or 0) + (n_syn.get(mix) or 0)
        out.append(f"| `{mix}` | {_num(n_real.get(mix), ',')} | {n_syn[mix]:,} | {_num(acc.get(mix), '.2f', scale=100)} | {eq_text} | "
                   f"{_num(rate.get(mix), '.2f', 'no gain' if eq is not None else '-')} | {_num(budget.get(mix), '.2f', scale=100)} ({total:,} real) |")
    return out


def exchange_tables(ctx: Context) -> str:
    """Per experiment row and synthetic set: what each mixture drawing from that set is worth in real images."""
    out = []
    for row in ctx.rows:
        n_syn = row.summary.get("n_syn")
        if not isinstance(n_syn, dict) or not n_syn:
            continue
        by_set: dict[str, list[str]] = {}
        for mix in n_syn:
            drawn = [k for k in (ctx.cfg.mixtures.get(mix) or {}) if k in ctx.cfg.synthetic.sets] or ["?"]
            by_set.setdefault(" + ".join(drawn), []).append(mix)
        for sets, mixes in by_set.items():
            out += [f"**{ctx.row_label(row)}, {sets}** (generator {ctx.cfg.diffusion.model}):\n",
                    *exchange_table({**row.summary, "test_acc": row.acc}, mixes), ""]
    return "\n".join(out) or ("_No experiment has exchange-rate columns (set real_curve and train its mixtures; "
                              "a curve that does not rise gives none)._\n")


def quality_table(ctx: Context) -> str:
    """FD, KID ± se, precision and recall of each synthetic set, per experiment row (docs/worth.md)."""
    lines = ["| experiment | set | " + " | ".join(title for _, title, _ in QUALITY) + " |", "|---|---|" + "---:|" * len(QUALITY)]
    for row in ctx.rows:
        columns: list[dict] = [c if isinstance(c := row.summary.get(key), dict) else {} for key, _, _ in QUALITY]
        for name in columns[0]:
            cells = [_num(col.get(name), fmt) for col, (_, _, fmt) in zip(columns, QUALITY)]
            lines.append(f"| {ctx.row_label(row)} | {name} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "_No experiment has syn_fd columns (evaluate computes them when a real-only mixture and a synthetic set are trained)._\n"
    return "\n".join(lines) + "\n"


def draw_figures(ctx: Context, out: Path) -> tuple[list[str], list[str], list[str]]:
    """Every comparison as a bar chart in `out`: ([report.md lines], [files written], [skip lines])."""
    body, figures, skipped = [], [], []
    for heading, file, build in COMPARISONS:
        body.append(f"## {heading}\n")
        try:
            charts = build(ctx)
        except Skip as e:
            skipped.append(f"{file}: skipped: {e}")
            body.append(f"_Not drawn: {e}._\n")
            continue
        for chart in charts:
            with atomic_path(out / chart.file) as tmp:
                bar_chart(ctx, chart).savefig(tmp, format="png")
            figures.append(chart.file)
            body.append(f"![{chart.caption}]({chart.file})\n")
    return body, figures, skipped


def write_report(ctx: Context, out: Path, source: str, notes: list[str]) -> tuple[list[str], list[str]]:
    """Draw every figure, copy the sample grids, write report.md: ([files written], [skip lines])."""
    out.mkdir(parents=True, exist_ok=True)
    body, figures, skipped = draw_figures(ctx, out)
    body += ["## Synthetic data quality: distance to the real images (beyond the paper)\n", quality_table(ctx),
             "## What synthetic images are worth in real images (beyond the paper)\n", exchange_tables(ctx), CURVES,
             "## Sample images per prompt set (paper Fig. 8)\n"]
    sample_body, samples, sample_skips = copy_samples(ctx, out)
    body, figures, skipped = body + sample_body, figures + samples, skipped + sample_skips
    # A figure of ours not drawn this time is removed: report.md never sits next to a stale picture.
    owned = {file for _, file, _ in COMPARISONS}
    for stale in out.glob("*.png"):
        if stale.name not in figures and (stale.name in owned or stale.name.startswith(("acc_", "samples_"))):
            stale.unlink()

    table, footnotes = table_markdown(ctx)
    legend = "\n".join(f"- {ctx.label(m)}: `{m}` ({_sources(ctx.cfg.mixtures[m]) if m in ctx.cfg.mixtures else 'not in params.yaml'})"
                       for m in ctx.all_mixes())
    page = ["# diffaug: test accuracy across experiments\n",
            f"{source} Accuracy: the final-epoch model on the test split, in %; with several seeds, "
            "mean ± sample std over seeds. One row per (model, variant, recipe): the most recent result.\n",
            "## Results\n", table + "\n", *(f"{f}\n" for f in footnotes),
            "Mixtures: fractions of the real training images (real), of each synthetic set (syn1, syn2, ...), "
            "and rotated / v-flipped copies of the real images drawn:\n", legend + "\n"]
    if notes:
        page += ["Left out or superseded:\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    write_bytes_atomic(out / "report.md", "\n".join(page + body).encode())
    return figures, skipped


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    ap = stage_parser("python -m diffaug.report", "The results table and bar charts of test accuracy across DVC experiments.")
    ap.add_argument("--exp-json", type=Path, help="output of `dvc exp show --json` saved to a file ('-': stdin); "
                                                  "default: run it here")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--synthetic", type=Path, default=Path("data/synthetic"), help="synthetic sets (their samples.png)")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = " ".join(["python -m diffaug.report", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if args.exp_json is not None:
        try:
            exp_show = json.loads(sys.stdin.read() if str(args.exp_json) == "-" else args.exp_json.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--exp-json {args.exp_json}: cannot read JSON ({e})") from None
        results, notes = parse_exp_show(exp_show)
        source = f"Numbers: each experiment's `{SUMMARY}` as saved in `{args.exp_json}` (`dvc exp show --json`); page built {now} by `{command}`."
    else:
        exp_show, shown = run_exp_show(args.all_commits)
        results, notes = parse_exp_show(exp_show, workspace_root=Path.cwd())
        source = f"Numbers: each experiment's `{SUMMARY}` as listed by `{shown}` in `{Path.cwd()}` on {now}; page built by `{command}`."
    rows, superseded = select_rows(results)
    if not rows:
        raise UserError(f"no results: no experiment or commit has a {SUMMARY} with test_acc (run `dvc repro` or "
                        "`dvc exp run` first)" + (f"; left out: {'; '.join(notes[:3])}" if notes else "")
                        + (f" (+{len(notes) - 3} more)" if len(notes) > 3 else ""))
    for line in notes + superseded:
        print(f"report: {line}")
    figures, skipped = write_report(Context(cfg, rows, args.synthetic), args.out, source, notes + superseded)
    for line in skipped:
        print(f"report: {line}")
    print(f"report: {len(rows)} experiment row(s), {len(figures)} figure(s), {len(skipped)} skipped -> "
          f"{args.out / 'report.md'}; built in {time.perf_counter() - start:.1f} s")
