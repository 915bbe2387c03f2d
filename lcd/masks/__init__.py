"""SAM region masks: computed once per image in bulk, stored as COCO RLE in Parquet, selected later."""
