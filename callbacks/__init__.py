"""Lightning callbacks of mrtl_lightning."""
