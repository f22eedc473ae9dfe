"""Outside protocols mapped onto hub frames: each gateway speaks to the hub as a frontend does."""
