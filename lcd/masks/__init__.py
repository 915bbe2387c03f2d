"""SAM region masks: computed once per image in bulk, stored as COCO RLE in Parquet, selected later.

`lcd.config` is imported first on purpose: it imports `lcd.masks.config` at its end (for the
`Params.masks` field), and `lcd.masks.config` needs `lcd.config.StrictConfig`. Loading
`lcd.config` before any submodule makes that cycle resolve whichever module a caller imports first.
"""

import lcd.config  # noqa: F401
