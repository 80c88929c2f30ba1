"""Memory of one dashboard process over several full audits.

Runs N audits one after another in this process, the way the dashboard server runs them for its
users: load the Trojan sample (shared, as `st.cache_resource` shares it), localize, edit with
dynamic rank-one, compare against the baselines, attributions before/after, build and render the
report, download the edited model. Prints the resident set size (RSS) after each audit and, with
`--objects`, the object types whose live count grew the most between the first and the last audit.

    python benchmarks/dashboard_memory.py                  # 6 audits through AuditSession
    python benchmarks/dashboard_memory.py --app -n 4       # through the pages (Streamlit AppTest)
    python benchmarks/dashboard_memory.py --objects --trace

A bounded process levels off after the first audit or two (allocator pools, imports, shared
caches filled); growth that goes on audit after audit is retained state. Figures go in reports,
not in tests (tests/test_memory_bounds.py checks the caches' sizes instead).
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "sample_models" / "digits_cnn_trojan.safetensors"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def trim() -> None:
    """Collect garbage and hand freed heap pages back (glibc), so RSS shows what is retained."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def type_counts() -> collections.Counter:
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


_SHARED: dict = {}


def audit_once(seed: int) -> None:
    """One full audit through the library, as the pages drive it."""
    from auditor import load_data, load_model
    from auditor.audit import AuditSession
    from auditor.report import render_html

    if not _SHARED:  # the dashboard's st.cache_resource: loaded once, shared by every user
        bundle = load_model(SAMPLE)
        _SHARED["pair"] = bundle, load_data("digits-trojan", spec=bundle.spec)
    bundle, data = _SHARED["pair"]
    audit = AuditSession(bundle, data, model_label="digits_cnn_trojan", seed=seed)
    audit.localize(samples=1)
    audit.editors()
    audit.run_edit("dynamic-rank-one", {"samples": 1})
    audit.compare_table()
    audit.weight_change()
    audit.attributions_before_after()
    choices = audit.baseline_choices()
    audit.run_tradeoff(choices[:3])
    audit.tradeoff.figure(highlight=audit.edit_label)
    report = audit.build_report(auditor="bench", notes="memory benchmark", date="2025-01-01")
    render_html(report)
    audit.model_bytes()


def app_audit_once(seed: int) -> None:
    """One full audit through the dashboard pages (Streamlit AppTest): a new browser session."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    if not getattr(PagesManager, "_bench_patched", False):  # as tests/test_app.py: the server's navigation mode
        init = PagesManager.__init__

        def navigation_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            PagesManager.uses_pages_directory = False

        PagesManager.__init__, PagesManager._bench_patched = navigation_init, True
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    if at.exception or at.error:
        raise RuntimeError([e.value for e in [*at.exception, *at.error]])
    at.button(key="load_go").click().run()
    for page in ("localize", "requirements", "edit"):
        at.switch_page(f"pages/{page}.py").run()
    at.button(key="edit_run").click().run()
    for page in ("compare", "report"):
        at.switch_page(f"pages/{page}.py").run()
        if page == "compare":
            buttons = [b for b in at.button if b.key == "cmp_run"]
            if buttons:
                buttons[0].click().run()
    if at.exception:
        raise RuntimeError([e.value for e in at.exception])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--audits", type=int, default=6)
    ap.add_argument("--app", action="store_true", help="drive the pages through Streamlit's AppTest")
    ap.add_argument("--vary-seed", action="store_true", help="a different seed per audit (new samples, new edits)")
    ap.add_argument("--objects", action="store_true", help="print the object types that grew in number")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: the allocation sites that grew")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(int(os.environ.get("AUDITOR_THREADS", "1")))
    if args.trace:
        import tracemalloc
        tracemalloc.start(12)
    run = app_audit_once if args.app else audit_once
    print(f"{'audit':>5} {'RSS MB':>8} {'seconds':>8}  ({'AppTest' if args.app else 'AuditSession'}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s))")
    print(f"{0:>5} {rss_mb():8.0f} {'':>8}  (imports done)")
    first_counts = first_snap = None
    rss = []
    for i in range(1, args.audits + 1):
        t0 = time.perf_counter()
        run(seed=i if args.vary_seed else 0)
        trim()
        rss.append(rss_mb())
        print(f"{i:>5} {rss[-1]:8.0f} {time.perf_counter() - t0:8.1f}", flush=True)
        if i == 1:
            first_counts = type_counts() if args.objects else None
            if args.trace:
                import tracemalloc
                first_snap = tracemalloc.take_snapshot()
    if len(rss) > 1:
        print(f"growth after the first audit: {rss[-1] - rss[0]:+.0f} MB over {len(rss) - 1} audits "
              f"({(rss[-1] - rss[0]) / (len(rss) - 1):+.1f} MB per audit)")
    if first_counts is not None:
        grown = type_counts()
        grown.subtract(first_counts)
        print("object types that grew most since audit 1:")
        for name, n in grown.most_common(15):
            if n > 0:
                print(f"  {n:+8d}  {name}")
    if first_snap is not None:
        import tracemalloc
        print("allocation sites that grew most since audit 1:")
        for stat in tracemalloc.take_snapshot().compare_to(first_snap, "traceback")[:8]:
            print(f"  {stat.size_diff / 2**20:+8.2f} MB  {stat.count_diff:+7d} blocks")
            for line in stat.traceback.format()[-6:]:
                print("      " + line)


if __name__ == "__main__":
    main()
