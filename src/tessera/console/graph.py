"""The identity graph of one profile, drawn as SVG on the server.

Three columns: on the left the profiles that were merged into this one (with
when and by which event), in the middle the profile, on the right its
identifiers, each linked to the profile by the source and the time of the
event that linked it. Identifiers carried by an event that caused a merge are
marked, since they are why the profiles became one. No JavaScript needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markupsafe import Markup, escape

from tessera.events.envelope import iso_time
from tessera.store.base import Profile

ROW = 44
TOP = 40
WIDTH = 1000
MAX_IDENTIFIERS = 40
LEFT_X, LEFT_W = 16, 230
MID_X, MID_W = 330, 200
RIGHT_X, RIGHT_W = 650, 330
NODE_H = 32


@dataclass(slots=True)
class MergeView:
    """A merge record with the event that caused it, as the console explains it."""

    merged: str
    event_uid: str
    at: float
    reason: str
    event_type: str | None = None
    event_source: str | None = None
    event_time: float | None = None
    identifiers: list[str] = field(default_factory=list)
    """``type:value`` of every identifier the causing event carried."""


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _date(ts: float) -> str:
    return iso_time(ts)[:10]


def _text(x: float, y: float, body: str, cls: str, anchor: str = "start") -> str:
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" class="{cls}" text-anchor="{anchor}">'
        f"{escape(body)}</text>"
    )


def identity_svg(profile: Profile, merges: list[MergeView]) -> Markup:
    identities = sorted(profile.identities, key=lambda i: (i.linked_at, i.type, i.value))
    shown = identities[:MAX_IDENTIFIERS]
    hidden = len(identities) - len(shown)
    in_merge_event = {ident for m in merges for ident in m.identifiers}
    merge_events = {m.event_uid for m in merges}
    rows = max(len(shown) + (1 if hidden else 0), 2 * len(merges), 3)
    height = TOP + rows * ROW + 24
    mid_y = TOP + (rows * ROW) / 2
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="identity-graph" role="img" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" width="100%" '
        f'aria-label="Identity graph of {escape(profile.id)}">',
        _text(LEFT_X, 22, "merged into this profile", "col-title"),
        _text(MID_X, 22, "profile", "col-title"),
        _text(RIGHT_X, 22, "identifiers (linked by source, date)", "col-title"),
    ]
    # identifiers and their links
    for index, link in enumerate(shown):
        y = TOP + index * ROW + ROW / 2
        ident = f"{link.type}:{link.value}"
        classes = ["link"]
        if ident in in_merge_event:
            classes.append("in-merge-event")
        if link.event_uid in merge_events:
            classes.append("linked-by-merge")
        x0, x1 = MID_X + MID_W, RIGHT_X
        cx = (x0 + x1) / 2
        title = (
            f"{ident}\nlinked {iso_time(link.linked_at)} by an event from {link.source or '?'}"
            f"\nevent {link.event_uid}\nreason: {link.reason}"
        )
        parts.append(
            f'<g class="{" ".join(classes)}" data-identifier="{escape(ident)}">'
            f"<title>{escape(title)}</title>"
            f'<path d="M{x0},{mid_y:.0f} C{cx:.0f},{mid_y:.0f} {cx:.0f},{y:.0f} {x1},{y:.0f}" '
            f'class="edge"/>'
            f'<rect x="{RIGHT_X}" y="{y - NODE_H / 2:.0f}" width="{RIGHT_W}" height="{NODE_H}" '
            f'rx="6" class="node identifier"/>'
            + _text(RIGHT_X + 10, y + 5, _short(link.type, 14), "id-type")
            + _text(RIGHT_X + 118, y + 5, _short(link.value, 30), "id-value")
            + _text(RIGHT_X - 8, y - 6, f"{link.source or '?'} \u00b7 {_date(link.linked_at)}",
                    "edge-label", "end")
            + "</g>"
        )
    if hidden:
        y = TOP + len(shown) * ROW + ROW / 2
        parts.append(_text(RIGHT_X + 10, y + 5, f"+ {hidden} more (see the table)", "more"))
    # merged profiles
    for index, merge in enumerate(merges):
        span = rows * ROW / max(len(merges), 1)
        y = TOP + index * span + span / 2
        by = " ".join(x for x in (merge.event_type, "from", merge.event_source) if x) \
            if merge.event_type else f"event {merge.event_uid[:12]}"
        title = (
            f"{merge.merged} merged into {profile.id} at {iso_time(merge.at)}\n"
            f"caused by event {merge.event_uid} ({by})\nreason: {merge.reason}"
        )
        if merge.identifiers:
            title += "\nthe event carried: " + ", ".join(merge.identifiers)
        x0, x1 = LEFT_X + LEFT_W, MID_X
        cx = (x0 + x1) / 2
        parts.append(
            f'<g class="merge" data-merged="{escape(merge.merged)}">'
            f"<title>{escape(title)}</title>"
            f'<path d="M{x0},{y:.0f} C{cx:.0f},{y:.0f} {cx:.0f},{mid_y:.0f} {x1},{mid_y:.0f}" '
            f'class="edge merge-edge"/>'
            f'<rect x="{LEFT_X}" y="{y - NODE_H / 2:.0f}" width="{LEFT_W}" height="{NODE_H}" '
            f'rx="6" class="node merged"/>'
            + _text(LEFT_X + 10, y + 5, _short(merge.merged, 30), "id-value")
            + _text(LEFT_X + 10, y + NODE_H / 2 + 14, f"merged {_date(merge.at)}", "edge-label")
            + _text(LEFT_X + 10, y + NODE_H / 2 + 28, _short(by, 34), "edge-label")
            + "</g>"
        )
    if not merges:
        parts.append(_text(LEFT_X + 10, mid_y + 5, "no merges", "more"))
    # the profile itself, drawn last so it sits above the edges
    parts.append(
        f'<g class="profile-node"><title>{escape(profile.id)}</title>'
        f'<rect x="{MID_X}" y="{mid_y - 28:.0f}" width="{MID_W}" height="56" rx="10" '
        f'class="node profile"/>'
        + _text(MID_X + MID_W / 2, mid_y - 6, _short(profile.id, 26), "profile-id", "middle")
        + _text(MID_X + MID_W / 2, mid_y + 14,
                f"{len(identities)} identifiers \u00b7 {profile.event_count} events",
                "profile-meta", "middle")
        + "</g>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))
