"""The local edit: masked concept generation that leaves everything outside the region untouched."""
