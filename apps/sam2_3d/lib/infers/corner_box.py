"""A box from two clicks: what a client without a box tool (OHIF's MONAI Label panel) can send to sam2_box.

OHIF's panel (monailabel 0.8.5's bundle) sends only its probe points, as ``foreground`` / ``background``
voxel indices; its rectangle tool is a measurement the panel never reads. So ``sam2_box`` without a
``roi`` reads exactly two foreground clicks as the box's opposite corners: ``roi = [i_a, i_b, j_a, j_b,
k_a, k_b]``, as Slicer's ROI would send it. Two clicks on one slice give a flat box on that slice (the
usual case); on two slices, a box whose slices bound the propagation, as a Slicer ROI with depth.
Background clicks stay negative clicks. Any other request is left as it is (a ``roi`` wins; undo/redo
carry no prompt), and sam2_box's own checks answer it.
"""

from __future__ import annotations


def with_corner_roi(request: dict) -> dict:
    if request.get("roi") not in (None, [], ""):
        return request
    foreground = request.get("foreground")
    if not isinstance(foreground, list) or len(foreground) != 2:
        return request
    a, b = foreground
    if not all(isinstance(p, (list, tuple)) and len(p) == 3 for p in (a, b)):
        return request  # the point checks name the malformed click
    out = dict(request)
    out["roi"] = [a[0], b[0], a[1], b[1], a[2], b[2]]
    out["foreground"] = []
    out["box_from_clicks"] = True
    return out
