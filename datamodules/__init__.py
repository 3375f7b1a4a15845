"""Per-dataset LightningDataModules that view their data at any resolution of a schedule."""
