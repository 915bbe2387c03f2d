"""Where an item edits: its region, from a mask file or a selection rule, and what that depends on.

A manifest item names its region with `mask` (a file, non-zero = edit) or `select`, a rule:
    box:X0,Y0,X1,Y1    a rectangle (pixels, end-exclusive)
    sam:<selection>    one of the SAM masks the masks stage stored for the image (image_id = file
                       stem), chosen by <selection> = largest | best | id:N | point:X,Y | box:... |
                       text:WORDS (lcd.masks.select), then holes filled and dilated per
                       `masks.fill_holes` / `masks.dilate_px` (lcd.edit.region says which dilation
                       applies where)
`parse_rule` is the one parser of these rules; everything else takes its RegionRule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lcd.errors import InputImageError, LcdError
from lcd.io import storage
from lcd.io.config import IoConfig
from lcd.io.images import check_mask_fits, load_mask
from lcd.jobs.manifest import ManifestItem
from lcd.masks.config import MasksConfig

if TYPE_CHECKING:
    from lcd.masks.store import MaskStore

BOX = re.compile(r"box:(\d+),(\d+),(\d+),(\d+)")
SAM_PREFIX = "sam:"


@dataclass(frozen=True)
class RegionRule:
    """A parsed `select` rule: a box, or a selection among stored SAM masks."""

    kind: Literal["box", "sam"]
    text: str  # the rule as written (stripped)
    box: tuple[int, int, int, int] | None = None
    selection: str | None = None  # for sam: what follows 'sam:'

    @property
    def needs_clip(self) -> bool:
        """`sam:text:` picks a mask by CLIP similarity to words."""
        return self.kind == "sam" and self.selection.startswith("text:")


def parse_rule(rule: str, item: str) -> RegionRule:
    """`box:...` or `sam:<selection>` -> RegionRule; anything else is an InputImageError naming the item."""
    r = rule.strip()
    if m := BOX.fullmatch(r):
        return RegionRule("box", r, box=tuple(map(int, m.groups())))
    if r.startswith(SAM_PREFIX) and r[len(SAM_PREFIX):].strip():
        return RegionRule("sam", r, selection=r[len(SAM_PREFIX):].strip())
    raise InputImageError(f"{item}: selection rule {rule!r} is not supported; use 'box:x0,y0,x1,y1', "
                          "'sam:<selection>' or give a mask file", item=item)


def item_rule(item: ManifestItem) -> RegionRule | None:
    """The item's rule, or None when it names a mask file."""
    return None if item.mask is not None else parse_rule(item.select, item.id)


def uses_sam(item: ManifestItem) -> bool:
    """True when the item's region is a `sam:` rule on the masks store (a bad rule: False)."""
    try:
        rule = item_rule(item)
    except LcdError:
        return False
    return rule is not None and rule.kind == "sam"


def needs_text_clip(item: ManifestItem) -> bool:
    try:
        rule = item_rule(item)
    except LcdError:
        return False
    return rule is not None and rule.needs_clip


def box_mask(rule: RegionRule, shape: tuple[int, int], item: str) -> np.ndarray:
    """A `box:` rule -> (H, W) bool mask; a box outside the image is an error naming the item."""
    x0, y0, x1, y1 = rule.box
    h, w = shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputImageError(f"{item}: box {rule.text!r} is empty or outside the {w}x{h} image", item=item)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _require_store(item: ManifestItem, rule: RegionRule, masks_store):
    if masks_store is None:
        raise InputImageError(f"{item.id}: region {rule.text!r} needs the masks store (edit masks_store / outputs/masks)",
                              item=item.id)
    return masks_store


def region_fingerprint(item: ManifestItem, masks_store: "str | Path | MaskStore | None", clip_pin: str | None,
                       masks_cfg: MasksConfig | None = None) -> object:
    """What a rule region depends on: the rule and, for `sam:` rules, the stored masks of the
    image, the post-processing (masks.fill_holes / dilate_px) and, for `sam:text:`, the CLIP
    weights and crop margin. Raises InputImageError naming the item when the store is missing or
    has no masks for the image."""
    rule = parse_rule(item.select, item.id)
    if rule.kind == "box":
        return rule.text
    from lcd.masks.read import stored_masks_digest

    try:
        digest = stored_masks_digest(_require_store(item, rule, masks_store), Path(item.image).stem)
    except LcdError as e:
        raise InputImageError(f"{item.id}: {e}", item=item.id) from None
    m = masks_cfg or MasksConfig()
    return {"rule": rule.text, "masks": digest, "fill": m.fill_holes, "dilate": m.dilate_px,
            "clip": clip_pin if rule.needs_clip else None, "text_margin": m.text_crop_margin if rule.needs_clip else None}


def load_region(item: ManifestItem, image: np.ndarray, masks_store: "str | Path | MaskStore | None" = None,
                clip=None, masks_cfg: MasksConfig | None = None, limits: IoConfig | None = None) -> np.ndarray:
    """(H, W) bool region of `item` (see the module docstring), checked against the image; a mask
    by URL is read within `limits` (the `io` section)."""
    if item.mask is not None:
        mask = load_mask(item.mask, limits=limits)
        check_mask_fits(image, mask, item.image, item.mask)
        return mask
    rule = parse_rule(item.select, item.id)
    if rule.kind == "box":
        return box_mask(rule, image.shape[:2], item.id)
    from lcd.masks.read import select_region_mask

    try:
        mask = select_region_mask(_require_store(item, rule, masks_store), Path(item.image).stem,
                                  rule.selection, masks_cfg or MasksConfig(), clip=clip, image=image)
    except LcdError as e:
        raise InputImageError(f"{item.id}: {e}", item=item.id) from None
    check_mask_fits(image, mask, item.image, f"{masks_store}:{rule.text}")
    return mask


def open_masks_store(masks_store, items: list[ManifestItem]):
    """The masks store opened once for the shard's `sam:` items (a lookup then reads one part,
    not every part's footer). A path that does not exist becomes None, so each `sam:` item fails
    saying it needs the store; a store that cannot be opened stays a path, so each item that
    needs it fails with the store's own message."""
    from lcd.masks.store import MaskStore, open_store

    if masks_store is None or isinstance(masks_store, MaskStore):
        return masks_store
    if not (storage.exists(masks_store) if storage.is_remote(masks_store) else Path(masks_store).exists()):
        return None
    if not any(map(uses_sam, items)):
        return masks_store
    try:
        return open_store(masks_store)
    except LcdError:
        return masks_store
