"""The container state machine as a small inline SVG, with the current state highlighted."""

from __future__ import annotations

import html

#: (state, x) on one row; REMOVED is where a container goes when RemoveContainer succeeds.
STATES = (("CREATED", 20), ("RUNNING", 170), ("EXITED", 320), ("REMOVED", 470))
#: Every transition a runtime allows; a container never started can be removed at once.
EDGES = (
    ("CREATED", "RUNNING", "StartContainer"),
    ("RUNNING", "EXITED", "StopContainer / exit"),
    ("EXITED", "REMOVED", "RemoveContainer"),
    ("CREATED", "REMOVED", "RemoveContainer (never started)"),
)
BOX_W, BOX_H, Y = 110, 36, 40


def short_state(name: str) -> str:
    """``CONTAINER_RUNNING`` -> ``RUNNING``."""
    return name.removeprefix("CONTAINER_")


def state_machine_svg(current: str | None = None) -> str:
    """An SVG of CREATED → RUNNING → EXITED → REMOVED (and CREATED → REMOVED below);
    ``current`` is filled in."""
    current = short_state(current) if current else None
    xs = dict(STATES)
    names = [name for name, _ in STATES]
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="600" height="130" '
        'class="crilab-state-machine" role="img" aria-label="container state machine">',
        '<defs><marker id="crilab-arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
    ]
    for src, dst, label in EDGES:
        ends = f'data-from="{src}" data-to="{dst}" stroke="#555" fill="none" '
        if names.index(dst) == names.index(src) + 1:  # neighbours: a straight arrow
            x1, x2 = xs[src] + BOX_W, xs[dst]
            parts.append(
                f'<line x1="{x1}" y1="{Y + BOX_H / 2}" x2="{x2 - 2}" y2="{Y + BOX_H / 2}" '
                f'{ends}marker-end="url(#crilab-arrow)"/>'
                f'<text x="{(x1 + x2) / 2}" y="{Y - 8}" font-size="10" text-anchor="middle" '
                f'fill="#333">{html.escape(label)}</text>'
            )
        else:  # a skip: a curve under the row, from bottom to bottom
            x1, x2 = xs[src] + BOX_W / 2, xs[dst] + BOX_W / 2
            bottom = Y + BOX_H
            parts.append(
                f'<path d="M{x1},{bottom} Q{(x1 + x2) / 2},{bottom + 70} {x2},{bottom + 2}" '
                f'{ends}marker-end="url(#crilab-arrow)"/>'
                f'<text x="{(x1 + x2) / 2}" y="{bottom + 46}" font-size="10" '
                f'text-anchor="middle" fill="#333">{html.escape(label)}</text>'
            )
    for name, x in STATES:
        on = name == current
        fill, stroke, weight = ("#2e7d32", "#1b5e20", "bold") if on else ("#f5f5f5", "#999", "")
        color = "#fff" if on else "#333"
        parts.append(
            f'<rect x="{x}" y="{Y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
            f'stroke="{stroke}" data-state="{name}" data-current="{str(on).lower()}"/>'
            f'<text x="{x + BOX_W / 2}" y="{Y + 23}" font-size="13" text-anchor="middle" '
            f'fill="{color}" font-weight="{weight}">{name}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
