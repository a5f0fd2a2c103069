"""Calibrate the SummHay insight-locating threshold on real topic files (README "Real data").

For every insight of a topic, the best window score (`InsightLocator.best`) is measured in each
document that INCLUDES the insight (positives) and in each document that does not (negatives; a
sharper subset: documents including no insight of the same subtopic). A threshold is good when
almost no negative passes while most positives do. It also checks that each located span prefers
its own insight: its similarity to the insight vs. to every other insight of the topic.

    .venv/bin/python scripts/summhay_calibrate.py topic_news5.json [more topic files] [--show 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys

from needlework.data.locate import INSIGHT_THRESHOLD, InsightLocator


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("topics", nargs="+")
    ap.add_argument("--threshold", type=float, default=INSIGHT_THRESHOLD)
    ap.add_argument("--show", type=int, default=0, help="print this many random located (insight, span) pairs")
    args = ap.parse_args(argv)
    pos, neg, off, own_pref, located, pairs = [], [], [], [0, 0], [], []
    for path in args.topics:
        topic = json.load(open(path, encoding="utf-8"))
        ins = {str(i["insight_id"]): (str(i["insight"]), k) for k, st in enumerate(topic["subtopics"]) for i in st["insights"]}
        docs = topic["documents"]
        inc = [{str(x) for x in d["insights_included"] or []} for d in docs]
        loc = InsightLocator([str(d["document_text"]) for d in docs])
        for iid, (text, sub) in ins.items():
            sib = {k for k, (_, s) in ins.items() if s == sub}
            for i in range(len(docs)):
                hit = loc.best(i, text)
                score = hit[2] if hit else 0.0
                if iid in inc[i]:
                    pos.append(score)
                    pairs.append(1)
                    if score >= args.threshold:
                        span = loc.texts[i][hit[0] : hit[1]]
                        located.append((text, span))
                        others = max(loc.similarity(t, span) for k, (t, _) in ins.items() if k != iid)
                        own_pref[0 if loc.similarity(text, span) >= others else 1] += 1
                else:
                    neg.append(score)
                    if not inc[i] & sib:
                        off.append(score)
    th = args.threshold
    print(f"topics {len(args.topics)}; (insight, including document) pairs {len(pos)}; (insight, other document) pairs {len(neg)}")
    print("best score in including documents:     " + "  ".join(f"q{int(q * 100):02d} {quantile(pos, q):.3f}" for q in (0.05, 0.1, 0.15, 0.25, 0.5)))
    print("best score in non-including documents: " + "  ".join(f"q{q * 100:g} {quantile(neg, q):.3f}" for q in (0.5, 0.9, 0.95, 0.99, 0.999)) + f"  max {max(neg):.3f}")
    print("  ... of no insight of the subtopic:   " + "  ".join(f"q{q * 100:g} {quantile(off, q):.3f}" for q in (0.5, 0.9, 0.95, 0.99, 0.999)) + f"  max {max(off):.3f}")
    print("threshold  located(including)  passing(non-including)  passing(other-subtopic)")
    for t in sorted({0.3, 0.35, 0.4, 0.45, 0.5, th}):
        print(f"  {t:.2f}{'*' if t == th else ' '}    {sum(x >= t for x in pos) / len(pos):7.1%}          "
              f"{sum(x >= t for x in neg) / len(neg):7.2%} ({sum(x >= t for x in neg)})"
              f"          {sum(x >= t for x in off) / max(len(off), 1):7.2%} ({sum(x >= t for x in off)})")
    n = sum(own_pref)
    print(f"located spans at {th}: {n}; scoring highest for their own insight: {own_pref[0]} ({own_pref[0] / max(n, 1):.1%})")
    for text, span in random.Random(0).sample(located, min(args.show, len(located))):
        print(f"\n  insight: {text}\n  span:    {span}")


if __name__ == "__main__":
    main(sys.argv[1:])
