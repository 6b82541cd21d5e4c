"""The one table that tests/gpu/gpu_check.sh prints last, from the files its stages wrote.

    python -P tests/gpu/gpu_table.py OUT_DIR
"""
from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def junit_counts(path: Path) -> str:
    if not path.exists():
        return "no report"
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return f"{passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped"


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _parity(r: dict) -> str:
    return (f"exact={r['exact']}, same prefix {r['same_prefix_tokens']}, teacher-forced top-1 "
            f"{r['teacher_forced_top1']:.3f} (HF on itself {r.get('hf_self_teacher_forced_top1', float('nan')):.3f})")


PROBE_ROWS = [  # (key in probe.json, label, text of a result)
    ("fp32_tiny", "fp32 greedy == HF (tiny Llama)", _parity),
    ("bf16_big", "bf16 vs HF (0.68B)", _parity),
    ("graphs", "CUDA graphs vs eager", lambda g: f"{g['same_sequences']}/{g['sequences']} same greedy sequences; "
                                                f"{g['eager_s']} s -> {g['graphs_s']} s ({g['speedup']}x)"),
    ("memory_cap", "gpu_memory_utilization", lambda m: f"{m['utilization']}: used {m['used_gib']:.1f} of cap "
                                                       f"{m['cap_gib']:.1f} GiB ({'under' if m['under_cap'] else 'OVER'})"),
]


def rows(out: Path) -> list[tuple[str, str]]:
    table = []
    for name in ("kernels", "parity"):
        table.append((f"pytest {name}", junit_counts(out / f"{name}.xml")))
    probe = load(out / "probe.json") or {}
    for key, label, describe in PROBE_ROWS:
        r = probe.get(key)
        table.append((label, "not run" if r is None else "error: " + r["error"][:120] if "error" in r
                      else describe(r)))
    log = out / "bench_kernels.log"
    if log.exists():
        text = log.read_text()
        copy = re.search(r"copy: (\d+) GB/s", text)
        best = [float(m) for m in re.findall(r"\|\s+(\d+)%\s*$", text, re.M)]
        table.append(("decode attention vs copy", f"copy {copy.group(1) if copy else '?'} GB/s; "
                                                  f"best decode {max(best) if best else '?'}% of copy"))
    for name in ("throughput", "workload"):
        report = load(out / f"{name}.json")
        if not report:
            continue
        res = report["results"]
        parts = [f"{k} {v['output_tokens_per_s']:.0f} tok/s" for k, v in res.items()]
        if report.get("ratio_pagedllm_over_hf"):
            parts.append(f"ratio {report['ratio_pagedllm_over_hf']:.1f}x")
        table.append((f"bench {name} ({report['workload']['num_requests']} req)", ", ".join(parts)))
    stages = out / "stages.txt"
    if stages.exists():
        table.append(("stages", "; ".join(stages.read_text().split("\n")).strip("; ")))
    return table


def main() -> None:
    out = Path(sys.argv[1])
    width = max(len(k) for k, _ in rows(out))
    print("\n== GPU check ==")
    for key, value in rows(out):
        print(f"{key:<{width}} | {value}")


if __name__ == "__main__":
    main()
