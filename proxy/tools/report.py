"""``nsp-proxy report``: what a log says, for a person: a terminal table and a self-contained HTML page.

One streamed pass with bounded state: counts per time bucket and category (buckets coarsen from a minute to an
hour to a day when there are more than ``MAX_BUCKETS``), per association, and the most denied sources and
destinations (a bounded counter: when it holds ``MAX_TRACKED`` keys the rarer half is dropped, so the top of a
huge log is approximate and says so). The HTML carries its charts as inline SVG (``proxy.tools.svg``): no
script, no network, it opens anywhere.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.tools import svg
from proxy.tools.logread import Entry

MAX_BUCKETS = 2_000
MAX_BARS = 60  # bars per time chart: consecutive buckets are summed into one bar beyond that
MAX_TRACKED = 10_000
BUCKET_WIDTHS = (16, 15, 13, 10)  # ISO prefix lengths: minute, 10 minutes, hour, day
_WIDTH_NAMES = {16: "minute", 15: "10 minutes", 13: "hour", 10: "day"}


@dataclass
class Summary:
    records: int = 0
    would_deny: int = 0
    denied: int = 0  # blocked by the proxy
    bucket_width: int = BUCKET_WIDTHS[0]
    over_time: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # bucket -> category
    over_time_assoc: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # -> association
    by_association: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    categories: Counter = field(default_factory=Counter)
    denied_sources: Counter = field(default_factory=Counter)
    denied_destinations: Counter = field(default_factory=Counter)
    approximate: bool = False
    top: int = 10


def summarise(entries: Iterable[Entry], top: int = 10) -> Summary:
    summary = Summary(top=top)
    for entry in entries:
        summary.records += entry.count
        summary.categories[entry.category] += entry.count
        bucket = entry.time[: summary.bucket_width] or "?"
        summary.over_time[bucket][entry.category] += entry.count
        summary.over_time_assoc[bucket][entry.association or "-"] += entry.count
        if len(summary.over_time) > MAX_BUCKETS:
            _coarsen(summary)
        assoc = summary.by_association[entry.association or "-"]
        assoc["records"] += entry.count
        assoc["allowed" if entry.allowed else "denied"] += entry.count
        if entry.would_deny:
            summary.would_deny += entry.count
            assoc["would deny"] += entry.count
            who = entry.source_ip if entry.inbound else f"{entry.destination}:{entry.destination_port}"
            table = summary.denied_sources if entry.inbound else summary.denied_destinations
            _bounded_add(table, who, entry.count, summary)
        if not entry.allowed:
            summary.denied += entry.count
    return summary


def _coarsen(summary: Summary) -> None:
    widths = [w for w in BUCKET_WIDTHS if w < summary.bucket_width]
    summary.bucket_width = widths[0] if widths else 0
    for name in ("over_time", "over_time_assoc"):
        merged: dict[str, Counter] = defaultdict(Counter)
        for bucket, counts in getattr(summary, name).items():
            merged[bucket[: summary.bucket_width] or "all"].update(counts)
        setattr(summary, name, merged)


def _bounded_add(table: Counter, key: str, count: int, summary: Summary) -> None:
    table[key] += count
    if len(table) > MAX_TRACKED:
        summary.approximate = True
        for rare, _ in table.most_common()[MAX_TRACKED // 2 :]:
            del table[rare]


# -- terminal ---------------------------------------------------------------------------------------------------


def as_text(summary: Summary) -> str:
    lines = [f"{summary.records} record(s): {summary.denied} blocked, {summary.would_deny} that Enforced would deny",
             "", f"{'association':32} {'records':>9} {'allowed':>9} {'blocked':>9} {'would deny':>10}"]
    for name, counts in sorted(summary.by_association.items()):
        lines.append(f"{name[:32]:32} {counts['records']:9} {counts['allowed']:9} {counts['denied']:9} "
                     f"{counts['would deny']:10}")
    lines += ["", f"{'category':48} {'records':>9}"]
    lines += [f"{name[:48]:48} {count:9}" for name, count in summary.categories.most_common()]
    for title, table in (("top would-deny sources (inbound)", summary.denied_sources),
                         ("top would-deny destinations (outbound)", summary.denied_destinations)):
        if table:
            lines += ["", title + (" (approximate)" if summary.approximate else "")]
            lines += [f"  {count:9}  {key}" for key, count in table.most_common(summary.top)]
    return "\n".join(lines) + "\n"


# -- HTML -------------------------------------------------------------------------------------------------------


def as_html(summary: Summary) -> str:
    categories = [name for name, _ in summary.categories.most_common()]
    associations = sorted(summary.by_association)
    period = _WIDTH_NAMES.get(summary.bucket_width, "period")
    over_time = svg.stacked_bars(_bars(summary.over_time, categories), categories,
                                 title=f"Decisions over time (per {period} or more) by category")
    over_time_assoc = svg.stacked_bars(_bars(summary.over_time_assoc, associations), associations,
                                       title=f"Decisions over time (per {period} or more) by association")
    kinds = ["allowed", "denied", "would deny"]
    per_association = svg.grouped_bars(
        [(name, [summary.by_association[name][k] for k in kinds]) for name in associations], kinds,
        title="Per association: allowed, blocked, would deny (Enforced)")
    sections = [
        f"<p>{summary.records} record(s): <b>{summary.denied}</b> blocked, <b>{summary.would_deny}</b> that "
        "Enforced would deny.</p>",
        f'<figure id="over-time">{over_time}</figure>',
        f'<figure id="over-time-association">{over_time_assoc}</figure>',
        f'<figure id="per-association">{per_association}</figure>',
        _table("Categories", ["category", "records"], summary.categories.most_common()),
        _table("Top would-deny sources (inbound)", ["source", "records"],
               summary.denied_sources.most_common(summary.top)),
        _table("Top would-deny destinations (outbound)", ["destination", "records"],
               summary.denied_destinations.most_common(summary.top)),
    ]
    if summary.approximate:
        sections.append(f"<p>The top tables are approximate: more than {MAX_TRACKED} distinct values.</p>")
    return _PAGE.replace("{body}", "\n".join(sections))


def _bars(over_time: dict[str, Counter], keys: list[str]) -> list[tuple[str, list[int]]]:
    """At most ``MAX_BARS`` bars: consecutive buckets summed, each bar labelled with its first bucket."""
    buckets = sorted(over_time)
    group = -(-len(buckets) // MAX_BARS) or 1
    bars = []
    for start in range(0, len(buckets), group):
        total: Counter = Counter()
        for bucket in buckets[start : start + group]:
            total.update(over_time[bucket])
        bars.append((buckets[start], [total[k] for k in keys]))
    return bars


def _table(title: str, headings: list[str], rows: list[tuple[str, int]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td class=n>{v}</td></tr>" for k, v in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body or '<tr><td colspan=2>none</td></tr>'}</table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nsp-proxy access-log report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
td.n{text-align:right}figure{margin:1em 0}svg text{font-size:11px;fill:#333}
</style></head><body>
<h1>nsp-proxy access-log report</h1>
{body}
</body></html>
"""
