"""How the App draws a label, set through the label's own attributes (no FiftyOne import here,
so the bulk loader's worker processes can use it).

FiftyOne's App (1.22) strokes the box of every Detection, except one that carries ``convexHull``
(the path it uses for 3D projections), which it draws as that polygon instead. A one-point polygon
draws nothing, so a stuff label shows its mask only: no image-wide box over the image and the grid
tiles. Hovering, clicking and selecting it still work (they use the box). Things keep their boxes.
``tests/test_browser_app.py`` checks the drawing in the App itself.
"""

from __future__ import annotations

from typing import Any

MASK_ONLY_ATTRIBUTE = "convexHull"
MASK_ONLY_POLYGON = ((0.0, 0.0),)


def thing_attributes(isthing: bool) -> dict[str, Any]:
    """``isthing`` and the drawing hint that goes with it, for a new label (a thing gets no hint).

    ``convert.set_isthing`` changes both on an existing label.
    """
    if isthing:
        return {"isthing": True}
    return {"isthing": False, MASK_ONLY_ATTRIBUTE: [list(point) for point in MASK_ONLY_POLYGON]}
