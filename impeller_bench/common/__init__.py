"""The floor every stage may import: errors, progress, checked image reads and atomic file writes, the
pretrained backbones and the metric definitions (each used by more than one stage), the version."""
