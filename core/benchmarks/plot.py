"""Turn throughput results JSON files into a PNG bar chart for the docs.

One group of bars per results file (labelled by the file name or ``--labels``), one bar per
backend, the value is output tokens per second. Uses the Agg backend: no display needed.

    python -m pagedllm.benchmarks.plot results.json [more.json ...] -o docs/throughput.png
"""
from __future__ import annotations

import argparse
import json
import os


def load_results(paths: list[str]) -> list[dict]:
    """Read each JSON written by ``pagedllm bench throughput --output-json``."""
    reports = []
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        if not isinstance(report, dict) or not report.get("results"):
            raise ValueError(f"{path} is not a throughput results file (no 'results' in it)")
        reports.append(report)
    return reports


def plot_throughput(reports: list[dict], out_png: str, labels: list[str] | None = None,
                    metric: str = "output_tokens_per_s") -> str:
    """Draw grouped bars of ``metric`` per backend per report; return the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(reports):
        raise ValueError(f"labels must have one entry per results file ({len(reports)}), got {len(labels)}")
    labels = labels or [f"{r['model'].split('/')[-1]}, {r['dtype']}, {r['device']}" for r in reports]
    backends = list(dict.fromkeys(b for r in reports for b in r["results"]))
    width = 0.8 / len(backends)
    fig, ax = plt.subplots(figsize=(max(5, 2.5 * len(reports) + 1.5), 4))
    for j, backend in enumerate(backends):
        xs, ys, texts = [], [], []
        for i, report in enumerate(reports):
            result = report["results"].get(backend)
            if result is None:
                continue
            xs.append(i + (j - (len(backends) - 1) / 2) * width)
            ys.append(result[metric])
            texts.append(_bar_label(backend, result, metric))
        name = backend if backend != "hf" else "transformers (static batches)"
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, labels=texts, fontsize=8, padding=2)
    for i, report in enumerate(reports):
        ratio = report.get("ratio_pagedllm_over_hf")
        if ratio is not None:
            labels[i] += f"\npagedllm/hf = {ratio:.2f}x"
    ax.set_xticks(range(len(reports)), labels, fontsize=8)
    ax.set_ylabel(metric.replace("_per_s", "/s").replace("_", " "))
    workload = reports[0]["workload"]
    ax.set_title(f"Offline throughput, {workload['num_requests']} chat requests, "
                 f"outputs {workload['output_len_min']}-{workload['output_len_max']} tokens", fontsize=9)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def _bar_label(backend: str, result: dict, metric: str) -> str:
    text = f"{result[metric]:.0f}"
    if backend == "hf" and "batch_size" in result:
        text += f"\n(bs {result['batch_size']})"
    return text


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", nargs="+", help="results JSON file(s) from bench throughput --output-json")
    parser.add_argument("-o", "--output", default="throughput.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--labels", nargs="+", help="one x-axis label per results file")
    parser.add_argument("--metric", default="output_tokens_per_s",
                        choices=("output_tokens_per_s", "total_tokens_per_s", "requests_per_s"))
    return parser


def main(args: argparse.Namespace) -> int:
    out = plot_throughput(load_results(args.results), args.output, args.labels, args.metric)
    print(f"plot written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(add_cli_args(argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)).parse_args()))
