"""Coordinates for the console's inline SVG pictures (the templates draw them; no JS library).

- cluster_picture: members and the identifiers they share, a radial two-ring layout: the shared
  identifiers on an inner ring, members on the outer one, each member placed near the mean
  direction of its identifiers, so the accounts that share a thing sit together.
- score_chart: an account's evaluations in order, score against sequence, coloured by decision.
- usage_chart: requests per UTC day over the account's last active days.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Any, Iterable

WIDTH, HEIGHT = 760, 520
CENTRE = (WIDTH / 2, HEIGHT / 2)
INNER, OUTER = 120, 220
MAX_IDENTIFIERS = 24


def _point(angle: float, radius: float) -> tuple[float, float]:
    return (round(CENTRE[0] + radius * math.cos(angle), 1), round(CENTRE[1] + radius * math.sin(angle), 1))


def _mean_angle(angles: Iterable[float]) -> float | None:
    angles = list(angles)
    if not angles:
        return None
    x, y = sum(math.cos(a) for a in angles), sum(math.sin(a) for a in angles)
    return math.atan2(y, x) if abs(x) + abs(y) > 1e-9 else angles[0]


def cluster_picture(members: list[dict[str, Any]], identifiers: list[dict[str, Any]],
                    edges: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    """Nodes and lines for the members shown and the shared identifiers they hold."""
    shared = {(i["kind"], i["hash"]): i for i in identifiers}
    shown = {m["account_id"] for m in members}
    holders: dict[tuple[str, str], list[str]] = {}
    for kind, value_hash, account_id in edges:
        if (kind, value_hash) in shared and account_id in shown:
            holders.setdefault((kind, value_hash), []).append(account_id)
    # The identifiers held by most of the members shown, strong before weak at a tie.
    chosen = sorted(holders, key=lambda n: (-len(holders[n]), shared[n]["strength"] != "strong", n))[:MAX_IDENTIFIERS]
    chosen.sort(key=lambda n: (n[0], n[1]))          # kinds grouped around the ring
    ident_angle: dict[tuple[str, str], float] = {}
    for i, node in enumerate(chosen):
        ident_angle[node] = -math.pi / 2 + 2 * math.pi * i / max(len(chosen), 1)
    held: dict[str, list[tuple[str, str]]] = {}
    for node in chosen:
        for account_id in holders[node]:
            held.setdefault(account_id, []).append(node)
    # Members in the order of the mean direction of what they hold, then spread evenly.
    order = sorted(members, key=lambda m: (_mean_angle(ident_angle[n] for n in held.get(m["account_id"], []))
                                           or 0.0, m["account_id"]))
    # A few identifiers sit close together at the hub; many spread over the inner ring.
    radius_inner = 0 if len(chosen) == 1 else min(INNER, 28 * len(chosen))
    ident_nodes = []
    for node in chosen:
        x, y = _point(ident_angle[node], radius_inner)
        info = shared[node]
        ident_nodes.append({"x": x, "y": y, "kind": node[0], "hash": node[1][:8], "strength": info["strength"],
                            "accounts": info["accounts"], "key": node})
    positions: dict[str, tuple[float, float]] = {}
    member_nodes = []
    start = (_mean_angle(ident_angle[n] for n in held.get(order[0]["account_id"], [])) or -math.pi / 2) if order else 0
    for i, m in enumerate(order):
        x, y = _point(start + 2 * math.pi * i / max(len(order), 1), OUTER)
        positions[m["account_id"]] = (x, y)
        member_nodes.append({"x": x, "y": y, "account_id": m["account_id"], "decision": m["decision"],
                             "score": m["score"], "label": m.get("label")})
    lines = []
    ident_pos = {n["key"]: (n["x"], n["y"]) for n in ident_nodes}
    for node in chosen:
        for account_id in holders[node]:
            (x1, y1), (x2, y2) = positions[account_id], ident_pos[node]
            lines.append({"x1": x1, "y1": y1, "x2": x2, "y2": y2, "strength": shared[node]["strength"]})
    return {"width": WIDTH, "height": HEIGHT, "members": member_nodes, "identifiers": ident_nodes, "lines": lines,
            "label_members": len(member_nodes) <= 16}


CHART_W, CHART_H, PAD = 1100, 190, 30


def score_chart(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Points for an account's evaluations, oldest first (score 0-100 upward)."""
    if not rows:
        return None
    n = len(rows)
    step = (CHART_W - 2 * PAD) / max(n - 1, 1)
    points = []
    for i, row in enumerate(rows):
        x = PAD + (i * step if n > 1 else (CHART_W - 2 * PAD) / 2)
        y = CHART_H - PAD - (CHART_H - 2 * PAD) * row["score"] / 100
        points.append({"x": round(x, 1), "y": round(y, 1), **row})
    return {"width": CHART_W, "height": CHART_H, "pad": PAD, "points": points,
            "path": " ".join(f"{p['x']},{p['y']}" for p in points),
            "grid": [{"score": s, "y": round(CHART_H - PAD - (CHART_H - 2 * PAD) * s / 100, 1)} for s in (0, 50, 100)]}


USAGE_W, USAGE_H = 540, 170


def usage_chart(days: list[Any], last_day: date | None, span: int) -> dict[str, Any] | None:
    """Bars of requests per day for the `span` days ending at the account's last active day."""
    if not days or last_day is None:
        return None
    by_day = {d.day: d.requests for d in days}
    first = last_day - timedelta(days=span - 1)
    peak = max(by_day.values()) or 1
    slot = (USAGE_W - 2 * PAD) / span
    bars = []
    for i in range(span):
        day = first + timedelta(days=i)
        requests = by_day.get(day, 0)
        height = (USAGE_H - 2 * PAD) * requests / peak
        bars.append({"x": round(PAD + i * slot + 1, 1), "y": round(USAGE_H - PAD - height, 1),
                     "w": round(max(slot - 2, 1), 1), "h": round(height, 1), "day": day, "requests": requests})
    return {"width": USAGE_W, "height": USAGE_H, "pad": PAD, "bars": bars, "peak": peak, "first": first,
            "last": last_day}
