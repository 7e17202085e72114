"""Input: data sources, the in-memory loader and on-device augmentation."""
