"""Image corners and offsets shared by the translation tests (``test_legacy_planes.py``,
``test_grid_planes.py``, ``test_products_translated.py``)."""

#: The origin, a negative corner, and one whose positions need int32.
CORNERS = [(0, 0), (-7, 12), (40_000, -3)]
#: Inside, over each edge, wholly off the image on every side, and back to a repeated offset.
OFFSETS = [(1, 2), (-3, 0), (0, -5), (9, 11), (-40, 0), (0, 60), (0, -60), (60, 0), (1, 2), (0, 0), (2, -1)]
